use std::time::Duration;
use hangfree::{Outcome, Pool, WorkerCommand};

#[test]
fn echo_round_trip() {
    let pool = Pool::builder(WorkerCommand::new(env!("CARGO_BIN_EXE_hangfree-hostile"))).workers(2).build().unwrap();
    let h = pool.submit(b"hello".to_vec()).unwrap();
    assert_eq!(h.wait_timeout(Duration::from_secs(10)), Some(Outcome::Value(b"hello".to_vec())));
    let b = pool.submit_batch((0..1000u32).map(|i| i.to_string().into_bytes()), 50).unwrap();
    let all = b.wait_all();
    assert_eq!(all.len(), 1000);
    for (i, o) in all.into_iter().enumerate() { assert_eq!(o, Outcome::Value(i.to_string().into_bytes())); }
    let h = pool.submit(b"!exit 3".to_vec()).unwrap();
    let o = h.wait_timeout(Duration::from_secs(10)).unwrap();
    println!("{o:?}");
    if let Outcome::Failed(e) = &o { println!("{e}"); }
    pool.close();
    pool.join(Some(Duration::from_secs(5))).unwrap();
    println!("{:?}", pool.stats());
}
