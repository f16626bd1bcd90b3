//! The daemon's life cycle against the pin directory, end to end with the real binary:
//! one daemon per pin directory, `detach` while a daemon holds the links, a pin
//! directory outside any bpffs, and the foreign-program check when the kernel cannot
//! be asked.
//!
//! Privileged: run as root, one test at a time (`cargo xtask test` does both). Each
//! daemon here has its own metrics port (9735-9745), apart from the other suites'.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use edge_filter_tests::topology::{Daemon, Netns, Topology, edge_filter_bin};
use serde_json::Value;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The config of the topology with its own metrics listener.
fn config(t: &Topology, name: &str, metrics: &str) -> PathBuf {
    ok(t.work_file(name, &format!("{}\n[metrics]\n{metrics}\n", t.base_config())))
}

/// The id of the XDP program on `dev` in `ns`, as the kernel reports it to iproute2.
fn xdp_prog(ns: &Netns, dev: &str) -> Option<u64> {
    let out = Command::new("ip").args(["-n", &ns.name, "-j", "-d", "link", "show", "dev", dev]).output().unwrap();
    assert!(out.status.success(), "ip link show {dev}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"].as_u64().or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
}

/// `status --json`: (interface, role, program id) of every link.
fn links(t: &Topology) -> Vec<(String, String, u64)> {
    let out = ok(t.cli(&["status", "--json"]));
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["role"].as_str().unwrap().to_owned(), i["program_id"].as_u64().unwrap()))
        .collect()
}

/// The topology with the daemon running (`a.toml`, its metrics listening on
/// `metrics`): the daemon, its pid and the links it holds, one per NIC.
fn holding(metrics: &str) -> (Topology, Daemon, u32, Vec<(String, String, u64)>) {
    let t = ok(Topology::new());
    let d = ok(t.start(&config(&t, "a.toml", &format!("listen = \"{metrics}\""))));
    let pid = d.pid().unwrap();
    let before = links(&t);
    assert_eq!(before.len(), 4, "{before:?}");
    (t, d, pid, before)
}

/// (exit code, stderr) of a finished command.
fn code_err(out: &Output) -> (i32, String) {
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// Run `cmd` to its end (at most ten seconds), without input or output but its
/// standard error: (exit code, standard error). `what` names it in a failure.
fn run_to_exit(cmd: &mut Command, what: &str) -> (i32, String) {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let out = finish(child, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{what}: {e}"));
    code_err(&out)
}

/// Wait up to `limit` for a child; kill it and say so if it is still running.
fn finish(mut child: std::process::Child, limit: Duration) -> Result<Output, String> {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return Err(format!("still running after {limit:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output().unwrap())
}

#[test]
fn detach_is_refused_while_the_daemon_holds_the_links() {
    let (t, d, pid, before) = holding("127.0.0.1:9735");
    let progs: Vec<_> = ["out0", "fe0", "ext0", "int0"].iter().map(|n| xdp_prog(&t.fw, n)).collect();
    assert!(progs.iter().all(Option::is_some), "{progs:?}");

    for args in [vec!["detach"], vec!["detach", "--iface", "out0"]] {
        let (code, err) = code_err(&ok(t.cli(&args)));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(&format!("pid {pid}")), "{args:?}: names the daemon: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        // Nothing changed: the NICs keep the program, the links and the roles.
        let now: Vec<_> = ["out0", "fe0", "ext0", "int0"].iter().map(|n| xdp_prog(&t.fw, n)).collect();
        assert_eq!(now, progs, "{args:?}");
        assert_eq!(links(&t), before, "{args:?}");
        assert!(t.pin_dir.join("maps").is_dir());
    }

    // The exit line is true: the filter stays, and is still there after the exit.
    let log = d.log.clone();
    assert!(d.stop().unwrap().success());
    let log = std::fs::read_to_string(log).unwrap();
    let exit = log.lines().find(|l| l.contains("exiting")).unwrap_or_else(|| panic!("no exit line:\n{log}"));
    assert!(exit.contains("out0") && exit.contains("stays attached"), "{exit}");
    assert!(["out0", "fe0", "ext0", "int0"].iter().all(|n| xdp_prog(&t.fw, n).is_some()));

    // With the daemon gone, detach does what it says.
    let out = ok(t.cli(&["detach", "--iface", "out0"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog(&t.fw, "out0"), None, "out0 detached");
    let out = ok(t.cli(&["detach"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in ["fe0", "ext0", "int0"] {
        assert_eq!(xdp_prog(&t.fw, n), None, "{n} detached");
    }
    assert!(!t.pin_dir.exists());
}

#[test]
fn a_second_run_on_the_same_pin_directory_is_refused_and_changes_nothing() {
    let (t, d, pid, before) = holding("127.0.0.1:9736");

    // The same metrics port (the old failure came late, from the port), then none at all
    // (the old second daemon kept running).
    for (name, metrics) in [("b.toml", "listen = \"127.0.0.1:9736\""), ("c.toml", "")] {
        let (code, err) = run_to_exit(ok(t.edge_filter()).args(["run", "--config"]).arg(config(&t, name, metrics)), &format!("{name}: a second run"));
        assert_ne!(code, 0, "{name}: {err}");
        assert!(err.contains(&format!("pid {pid}")), "{name}: names the running daemon: {err}");
        assert_eq!(links(&t), before, "{name}: nothing replaced");
    }
    // The first daemon still serves.
    ok(t.metrics("127.0.0.1:9736".parse().unwrap()));
    assert!(d.stop().unwrap().success());
}

/// Lazily unmounts a path when dropped (a bpffs an old `run` may have mounted).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a lazy unmount of a path this test owns; failure (nothing mounted) is harmless.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn bpffs_at(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(path.to_str().unwrap()) && l.split(' ').nth(2) == Some("bpf"))
}

#[test]
fn a_pin_directory_outside_a_bpffs_is_refused_and_nothing_is_hidden() {
    let t = ok(Topology::new());
    let parent = t.work.join("x").join("sub");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::write(parent.join("keep.txt"), "operator's file\n").unwrap();
    let pins = parent.join("pins");
    let _unmount = Unmount(parent.clone());
    let (code, err) = run_to_exit(
        t.fw.command(ok(edge_filter_bin()))
            .args(["run", "--pin-dir"])
            .arg(&pins)
            .arg("--config")
            .arg(config(&t, "a.toml", "listen = \"127.0.0.1:9737\""))
            .env("EDGE_FILTER_STATE_DIR", &t.state_dir),
        "run under a plain directory",
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&pins.display().to_string()) && err.contains("bpffs"), "names the directory and the fix: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!bpffs_at(&parent), "nothing mounted on {}", parent.display());
    assert_eq!(std::fs::read_to_string(parent.join("keep.txt")).unwrap(), "operator's file\n", "the files stay visible");
    assert!(!pins.exists());
    assert_eq!(xdp_prog(&t.fw, "out0"), None, "nothing attached");
}

/// A seccomp filter for the child: `socket(AF_NETLINK, ..)` fails with EPERM, so the
/// kernel cannot be asked about a NIC (as in a sandbox that allows only inet sockets).
fn deny_netlink(cmd: &mut Command) {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        f(JEQ_K, 0, 5, ARCH),
        f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        f(JEQ_K, 0, 3, libc::SYS_socket as u32),
        f(LD_W_ABS, 0, 0, 16), // seccomp_data.args[0], low half
        f(JEQ_K, 0, 1, libc::AF_NETLINK as u32),
        f(RET_K, 0, 0, 0x0005_0000 | libc::EPERM as u32), // SECCOMP_RET_ERRNO
        f(RET_K, 0, 0, 0x7fff_0000),                      // SECCOMP_RET_ALLOW
    ];
    // SAFETY: between fork and exec the closure only calls prctl, which is
    // async-signal-safe; `prog` outlives the child's copy of this closure.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn the_foreign_program_check_refuses_when_it_cannot_ask_the_kernel() {
    let t = ok(Topology::new());
    let mut cmd = ok(t.edge_filter());
    cmd.args(["run", "--config"]).arg(config(&t, "a.toml", "listen = \"127.0.0.1:9738\""));
    deny_netlink(&mut cmd);
    let (code, err) = run_to_exit(&mut cmd, "run without netlink");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot tell") && err.contains("out0"), "says it cannot tell, for which NIC: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for n in ["out0", "fe0", "ext0", "int0"] {
        assert_eq!(xdp_prog(&t.fw, n), None, "{n}: nothing attached");
    }
    assert!(!t.pin_dir.join("links").exists() || t.pin_dir.join("links").read_dir().unwrap().count() == 0);
}

#[test]
fn a_foreign_program_is_found_without_iproute2() {
    let t = ok(Topology::new());
    let foreign = t.foreign_xdp("out0");
    let (_held, id) = ok(foreign);
    // No `ip` on the PATH (nsenter by its full path: a changed PATH is searched).
    let nsenter = ["/usr/bin/nsenter", "/bin/nsenter"].into_iter().find(|p| Path::new(p).exists()).expect("nsenter");
    let (code, err) = run_to_exit(
        Command::new(nsenter)
            .arg(format!("--net={}", t.fw.path().display()))
            .arg("--")
            .arg(ok(edge_filter_bin()))
            .args(["run", "--config"])
            .arg(config(&t, "a.toml", "listen = \"127.0.0.1:9739\""))
            .env("PATH", t.work.join("empty"))
            .env("EDGE_FILTER_PIN_DIR", &t.pin_dir)
            .env("EDGE_FILTER_STATE_DIR", &t.state_dir),
        "run without ip",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("interface `out0` already has XDP program id {id}")), "{err}");
    assert_eq!(xdp_prog(&t.fw, "out0"), Some(u64::from(id)), "the foreign program stays");
}
