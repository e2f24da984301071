//! `warren-probe PROBE [ARGS]`: tries one thing a hostile root inside a
//! workspace would try and prints one line: `ok` when it worked, or
//! `denied <errno name>` (`denied short` for a read that returned less
//! than it should). The isolation probe suite runs it inside workspaces
//! (expecting `denied`) and on the host as the positive control (expecting
//! `ok`), so a missing tool cannot pass for a blocked attack.
//!
//! Only for tests: it is never shipped into workspaces by warren itself.

use std::ffi::CString;
use std::io::{Read, Write};
use std::process::ExitCode;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ESRCH => "ESRCH",
        libc::ENXIO => "ENXIO",
        libc::ENODEV => "ENODEV",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno{e}"),
    };
    n.to_string()
}

/// A syscall's return value as a verdict: `ok` for >= 0.
fn verdict(r: libc::c_long) -> String {
    if r >= 0 {
        "ok".into()
    } else {
        format!("denied {}", name(errno()))
    }
}

/// "reached" means the kernel got past the permission check and rejected
/// the (deliberately invalid) arguments instead: `ok` for the given errnos.
fn reached(r: libc::c_long, arg_errors: &[i32]) -> String {
    let e = errno();
    if r >= 0 || arg_errors.contains(&e) {
        "ok".into()
    } else {
        format!("denied {}", name(e))
    }
}

fn io_verdict(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("denied {}", name(e.raw_os_error().unwrap_or(0))),
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn probe(args: &[String]) -> Result<String, String> {
    let arg = |i: usize| args.get(i).cloned().ok_or_else(|| format!("{}: missing argument {i}", args[0]));
    Ok(match args[0].as_str() {
        // Write a file's current content back to it (sysctls, sysrq uses `write`).
        "rewrite" => {
            let path = arg(1)?;
            let mut cur = Vec::new();
            let r = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut cur));
            io_verdict(r.and_then(|_| std::fs::OpenOptions::new().write(true).open(&path)?.write_all(&cur)))
        }
        "write" => {
            let (path, value) = (arg(1)?, arg(2)?);
            io_verdict(
                std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| f.write_all(value.as_bytes())),
            )
        }
        // Read at least N bytes of a file.
        "read" => {
            let (path, n) = (arg(1)?, arg(2)?.parse::<usize>().map_err(|e| e.to_string())?);
            let mut buf = vec![0u8; n];
            match std::fs::File::open(&path) {
                Err(e) => format!("denied {}", name(e.raw_os_error().unwrap_or(0))),
                Ok(mut f) => {
                    let mut got = 0;
                    while got < n {
                        match f.read(&mut buf[got..]) {
                            Ok(0) => break,
                            Ok(k) => got += k,
                            Err(e) => return Ok(format!("denied {}", name(e.raw_os_error().unwrap_or(0)))),
                        }
                    }
                    if got >= n {
                        "ok".into()
                    } else {
                        "denied short".into()
                    }
                }
            }
        }
        // mknod a block device MAJOR MINOR in DIR and read its first sector.
        "blockdev" => {
            let (dir, major, minor) = (arg(1)?, arg(2)?, arg(3)?);
            let (major, minor) =
                (major.parse::<u32>().map_err(|e| e.to_string())?, minor.parse::<u32>().map_err(|e| e.to_string())?);
            let path = format!("{dir}/.warren-probe-blk-{}", std::process::id());
            let c = cstr(&path);
            // SAFETY: mknod with a valid C string.
            let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(major, minor)) };
            if r < 0 {
                return Ok(format!("denied mknod {}", name(errno())));
            }
            let mut buf = [0u8; 512];
            let out = match std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut buf)) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("denied open {}", name(e.raw_os_error().unwrap_or(0))),
            };
            let _ = std::fs::remove_file(&path);
            out
        }
        // Mount a tmpfs on DIR (in a private mount namespace if one can be had).
        "mount" => {
            let dir = arg(1)?;
            // SAFETY: unshare/mount with valid C strings; results checked.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) == 0 {
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    );
                }
                let d = cstr(&dir);
                verdict(
                    libc::mount(c"none".as_ptr(), d.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) as libc::c_long
                )
            }
        }
        // finit_module on a bad descriptor: EBADF once past the permission check.
        // SAFETY (below): raw system calls with integer or null arguments.
        "module" => reached(unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) }, &[libc::EBADF]),
        // KEYCTL_GET_KEYRING_ID of the session keyring, creating it.
        "keyctl" => verdict(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 1) }),
        "bpf" => {
            // BPF_MAP_CREATE of a one-entry array.
            let mut attr = [0u32; 32];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[1] = 4;
            attr[2] = 4;
            attr[3] = 1;
            verdict(unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) })
        }
        "perf" => {
            // perf_event_open: a software clock counter on this process.
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
            verdict(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) })
        }
        "ptrace" => {
            // `child`: a process of the probe's own (a debugger's case).
            let child = arg(1)? == "child";
            let pid: i32 = if child {
                match unsafe { libc::fork() } {
                    0 => loop {
                        unsafe { libc::pause() };
                    },
                    p => p,
                }
            } else {
                arg(1)?.parse().map_err(|e: std::num::ParseIntError| e.to_string())?
            };
            let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
            if r == 0 {
                let mut st = 0;
                unsafe {
                    libc::waitpid(pid, &mut st, libc::__WALL);
                    libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
                }
            }
            if child {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            verdict(r)
        }
        "unshare-user" => verdict(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long),
        "io-uring" => {
            let mut params = [0u8; 120];
            verdict(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) })
        }
        "x32" => verdict(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }),
        // Sleeps (a process the host can look for by its marker argument).
        "hold" => {
            let secs: u64 = arg(2)?.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
            std::thread::sleep(std::time::Duration::from_secs(secs));
            "ok".into()
        }
        other => return Err(format!("unknown probe {other}")),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: warren-probe PROBE [ARGS]");
        return ExitCode::from(2);
    }
    match probe(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warren-probe: {e}");
            ExitCode::from(2)
        }
    }
}
