//! Host processes by pid and start time, for backends that track a
//! workspace by its init's pid: a recorded (pid, start time) pair cannot be
//! fooled by pid reuse.

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or 0 when it does not exist.
pub fn start_ticks(pid: i32) -> u64 {
    stat_fields(pid).and_then(|f| f.get(19).and_then(|v| v.parse().ok())).unwrap_or(0)
}

/// The state letter (`R`, `S`, `T`…) of a live, non-zombie process with this
/// start time; `None` when it is gone, a zombie, or another process.
pub fn state(pid: i32, start_ticks: u64) -> Option<char> {
    let f = stat_fields(pid)?;
    let state = f.first()?.chars().next()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    (state != 'Z' && state != 'X' && start == start_ticks).then_some(state)
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let t = start_ticks(me);
        assert!(t > 0);
        assert!(state(me, t).is_some());
        assert_eq!(state(me, t + 1), None);
        assert_eq!(start_ticks(-5), 0);
    }
}
