//! The `hangfree` binary: the command line of [`hangfree_cli`], whose workers are this
//! same program.

fn main() {
    let exe = std::env::current_exe().map(|p| p.into_os_string()).unwrap_or_else(|_| "hangfree".into());
    std::process::exit(hangfree_cli::main_with(std::env::args_os().collect(), vec![exe]));
}
