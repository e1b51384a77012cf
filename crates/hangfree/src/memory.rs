//! Memory: reading a worker's resident size, parsing limits such as `"2GiB"`, and the
//! kernel's count of OOM kills (the evidence for "probably killed by the OOM killer").

/// The resident set size of a process in bytes, from `/proc/PID/statm`; `None` if it is
/// gone or unreadable.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// How many processes the kernel's OOM killer has killed since boot (`oom_kill` in
/// `/proc/vmstat`, Linux ≥ 4.13); `None` where the counter is not available.
pub fn oom_kills() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/vmstat").ok()?;
    s.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

/// Parses a memory size: a number of bytes (`"1048576"`), or a number with a unit —
/// `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB` (case-insensitive).
/// `KB`, `MB`… are decimal (powers of 1000); `K`, `KiB`, `M`, `MiB`… binary (powers of
/// 1024), as `ps` and `free` use them. Fractions are allowed (`"1.5GiB"`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{text:?} is not a memory size such as \"512MiB\" or \"2GB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        other => return Err(format!("unknown memory unit {other:?} in {text:?}")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range for a memory size"));
    }
    Ok(bytes as u64)
}

/// Formats a byte count for messages (`"1.5 GiB"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_systems() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2gb"), Ok(2_000_000_000));
        assert_eq!(parse_size(" 512M "), Ok(512 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn sizes_format_readably() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn own_rss_is_readable() {
        let me = std::process::id() as i32;
        assert!(rss_bytes(me).is_some_and(|b| b > 1 << 20));
        assert_eq!(rss_bytes(i32::MAX), None);
    }
}
