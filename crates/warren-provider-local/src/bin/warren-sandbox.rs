//! `warren-sandbox`: builds one local workspace and execs its agent as PID 1.
//! Reads a `SandboxConfig` as JSON on stdin; prints `ok <pid>` or
//! `error <reason>`; then stays as the workspace init's parent (a shim).

fn main() {
    std::process::exit(warren_provider_local::sandbox::helper_main());
}
