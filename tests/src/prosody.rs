//! Real XMPP servers in the sandbox: Prosody (Debian's package, with `lua-unbound`)
//! federating over s2s with dialback, and dnsmasq serving the `_xmpp-server._tcp` SRV
//! records and the servers' addresses.
//!
//! Every file lives under a directory the caller gives (a test's topology work
//! directory, removed with it); every process is killed and waited for on drop, also
//! when a test panics. Prosody and dnsmasq run in a namespace through
//! [`Netns::command`] (nsenter execs them, so the child's pid is their own); the admin
//! shell (`prosodyctl shell`) talks to Prosody over its Unix socket and needs no
//! namespace.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::topology::{Netns, terminate};

/// The programs and the Lua module these servers need, or an error saying how to
/// install them: a test that needs them fails, it never skips.
pub fn require_installed() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = ["prosody", "prosodyctl", "dnsmasq"].into_iter().filter(|p| which(p).is_none()).collect();
    // Prosody resolves with libunbound when the module is there, and then reads the
    // resolv.conf its config names; without it, it would read /etc/resolv.conf.
    if !Path::new("/usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so").exists() && !has_lua_unbound() {
        missing.push("lua-unbound");
    }
    ensure!(missing.is_empty(), "{} not installed: run `cargo xtask setup` (Debian packages prosody, lua-unbound, dnsmasq)", missing.join(", "));
    Ok(())
}

/// Where `program` is: in `PATH`, or in `/usr/sbin` and `/sbin` (dnsmasq's place,
/// which a user's `PATH` may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).map(|d| d.join(program)).find(|p| p.is_file())
}

fn has_lua_unbound() -> bool {
    std::process::Command::new("dpkg").args(["-s", "lua-unbound"]).output().is_ok_and(|o| o.status.success())
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// dnsmasq, stopped on drop: the authoritative server of `example.` ([`Dnsmasq::start`]:
/// SRV records for XMPP federation and the servers' addresses), or a DHCP server
/// ([`Dnsmasq::dhcp`]).
pub struct Dnsmasq {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Dnsmasq {
    /// Start dnsmasq in `ns`, listening on `listen` port 53, with
    /// `_xmpp-server._tcp.DOMAIN` pointing at DOMAIN port 5269 and DOMAIN's addresses
    /// for each `(domain, addresses)` of `hosts`. Its files go to `dir`.
    pub fn start(ns: &Netns, dir: &Path, listen: &[IpAddr], hosts: &[(&str, &[IpAddr])]) -> anyhow::Result<Self> {
        Self::spawn(ns, dir, |c| {
            c.arg("--bind-interfaces").args(listen.iter().map(|a| format!("--listen-address={a}"))).args([
                "--port=53",
                "--local=/example/",
                "--log-queries",
            ]);
            for (domain, addrs) in hosts {
                c.arg(format!("--srv-host=_xmpp-server._tcp.{domain},{domain},5269,0,5"));
                let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                c.arg(format!("--host-record={domain},{}", addrs.join(",")));
            }
        })
    }

    /// Start dnsmasq in `ns` as a DHCP server on `iface` (no DNS), leasing from
    /// `range` (dnsmasq's `--dhcp-range` value). Its files go to `dir`.
    pub fn dhcp(ns: &Netns, dir: &Path, iface: &str, range: &str) -> anyhow::Result<Self> {
        let leases = dir.join("leases");
        Self::spawn(ns, dir, |c| {
            c.args(["--port=0", "--bind-interfaces", "--log-dhcp"])
                .arg(format!("--interface={iface}"))
                .arg(format!("--dhcp-range={range}"))
                .arg(format!("--dhcp-leasefile={}", leases.display()));
        })
    }

    /// dnsmasq in `ns` with no configuration of its own, what `configure` adds, and
    /// its pid file, log and stderr in `dir`; returns once it has bound its sockets.
    fn spawn(ns: &Netns, dir: &Path, configure: impl FnOnce(&mut std::process::Command)) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("dnsmasq.log");
        let pid = dir.join("dnsmasq.pid");
        let mut c = ns.command(which("dnsmasq").context("no dnsmasq: run `cargo xtask setup`")?);
        c.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--user=root", "--group=root"])
            .arg(format!("--pid-file={}", pid.display()))
            .arg(format!("--log-facility={}", log.display()));
        configure(&mut c);
        let stderr = std::fs::File::create(dir.join("dnsmasq.stderr"))?;
        let child = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().context("start dnsmasq")?;
        let mut d = Self { child: Some(child), log };
        // The pid file is written once the sockets are bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&pid).is_ok_and(|p| !p.trim().is_empty()) {
                return Ok(d);
            }
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("dnsmasq exited ({st}): {}\n{}", tail(&dir.join("dnsmasq.stderr"), 20), tail(&d.log, 20));
            }
            ensure!(Instant::now() < deadline, "dnsmasq did not start within 10 s: {}", tail(&d.log, 20));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The queries logged for `name` of type `qtype`, by the address they came from:
    /// dnsmasq logs `query[SRV] NAME from ADDR`.
    pub fn queries(&self, qtype: &str, name: &str) -> Vec<String> {
        let needle = format!("query[{qtype}] {name} from ");
        self.log_text().lines().filter_map(|l| l.split_once(&needle).map(|(_, from)| from.trim().to_owned())).collect()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate(&mut c, "dnsmasq", Duration::from_secs(5));
        }
    }
}

/// One Prosody instance serving one domain, s2s only (no client port), dialback
/// without TLS, resolving through libunbound with the resolv.conf of its directory.
pub struct Prosody {
    pub domain: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

/// Prosody's configuration for `domain`, every path under `dir`, resolving with the
/// name server(s) of `dir/resolv.conf`.
pub fn prosody_config(dir: &Path, domain: &str) -> String {
    let d = dir.display();
    format!(
        r#"-- written by edge-filter-tests (tests/src/prosody.rs)
run_as_root = true -- mod_posix refuses uid 0 otherwise
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
admin_socket = "{d}/prosody.sock"
log = {{ debug = "{d}/prosody.log" }}
modules_enabled = {{ "dialback", "ping", "admin_shell", "posix" }}
modules_disabled = {{ "c2s", "offline" }}
s2s_ports = {{ 5269 }}
s2s_require_encryption = false
s2s_secure_auth = false
s2s_timeout = 10
network_settings = {{ connect_timeout = 5 }}
unbound = {{ resolvconf = "{d}/resolv.conf"; hoststxt = false }}
VirtualHost "{domain}"
"#
    )
}

impl Prosody {
    /// Start Prosody for `domain` in `ns`, its files under `dir`, resolving names
    /// with `nameserver` (port 53). Returns once its admin socket exists and its s2s
    /// port accepts connections.
    pub fn start(ns: &Netns, dir: &Path, domain: &str, nameserver: IpAddr) -> anyhow::Result<Self> {
        for sub in ["data", "certs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {nameserver}\n"))?;
        let config = dir.join("prosody.cfg.lua");
        std::fs::write(&config, prosody_config(dir, domain))?;
        let out = std::fs::File::create(dir.join("stdout.log"))?;
        let child = ns
            .command(which("prosody").context("no prosody: run `cargo xtask setup`")?)
            .arg("--config")
            .arg(&config)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start prosody")?;
        let mut p = Self { domain: domain.to_owned(), dir: dir.to_owned(), config, child: Some(child) };
        let socket = dir.join("prosody.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listening = socket.exists()
                && ns.enter(|| TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 5269)), Duration::from_millis(200)).is_ok())?;
            if listening {
                return Ok(p);
            }
            if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("prosody for {domain} exited ({st}):\n{}", p.diagnostics());
            }
            ensure!(Instant::now() < deadline, "prosody for {domain} did not start within 20 s:\n{}", p.diagnostics());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `prosodyctl --config CONFIG shell EXPR`: one Lua expression of the admin shell.
    /// Its exit status is the number of errors.
    pub fn shell(&self, expr: &str) -> anyhow::Result<Output> {
        std::process::Command::new(which("prosodyctl").context("no prosodyctl: run `cargo xtask setup`")?)
            .arg("--config")
            .arg(&self.config)
            .arg("shell")
            .arg(expr)
            .stdin(Stdio::null())
            .output()
            .context("run prosodyctl shell")
    }

    /// An XMPP ping from this server's domain to `to` over s2s, waiting up to
    /// `timeout_secs`: whether a pong came back, and what the shell printed.
    pub fn ping(&self, to: &str, timeout_secs: u32) -> anyhow::Result<(bool, String)> {
        let started = Instant::now();
        let out = self.shell(&format!("xmpp:ping({:?}, {:?}, {timeout_secs})", self.domain, to))?;
        let text = shell_text(&out);
        let pong = out.status.success() && text.contains(&format!("pong from {to}"));
        Ok((pong, format!("{} ({:.2} s): {text}", out.status, started.elapsed().as_secs_f64())))
    }

    /// The s2s sessions as the admin shell lists them, with the remote address of
    /// each connection (`s2s:show`).
    pub fn s2s_sessions(&self) -> anyhow::Result<String> {
        let out = self.shell(r#"s2s:show(nil, "id host dir remote ipv ip port secure dialback")"#)?;
        ensure!(out.status.success(), "s2s:show: {}", shell_text(&out));
        Ok(shell_text(&out))
    }

    /// Close every s2s session of this server, so that the next ping connects afresh.
    pub fn close_all_s2s(&self) -> anyhow::Result<()> {
        let out = self.shell(&format!("s2s:closeall({:?})", self.domain))?;
        // "No sessions to close" is an error for the shell, and fine here.
        let text = shell_text(&out);
        ensure!(out.status.success() || text.contains("No sessions"), "s2s:closeall: {text}");
        Ok(())
    }

    /// The tails of its logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "--- {} stdout:\n{}", self.domain, tail(&self.dir.join("stdout.log"), 20));
        let _ = writeln!(s, "--- {} prosody.log:\n{}", self.domain, tail(&self.dir.join("prosody.log"), 40));
        s
    }
}

/// The shell's stdout and stderr without certmanager's warnings about the missing
/// certificates (s2s runs without TLS here).
fn shell_text(out: &Output) -> String {
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    all.lines().filter(|l| !l.starts_with("certmanager")).collect::<Vec<_>>().join("\n")
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate(&mut c, "prosody", Duration::from_secs(5));
        }
    }
}
