//! The perimeter topology of the design's address plan, in network namespaces, with
//! the real `edge-filter` daemon on the firewall and real TCP between the hosts.
//!
//! ```text
//!  partner ns          fw ns (edge-filter)                       edge ns
//!  198.51.100.20 --- out0 [outside]   ext0 [edge] --- 203.0.113.10   (access-edge)
//!  2001:db8:5100::20                  int0 [edge] --- 192.0.2.10     (internal-edge)
//!  frontend ns                                        2001:db8:203::10, 2001:db8:192::10
//!  198.18.0.20 ------ fe0  [outside]
//!  2001:db8:198::20
//! ```
//!
//! Every namespace, pin directory and state directory is named with the process id
//! and a counter, and removed on drop, also when a test panics. Namespaces are
//! entered with `setns` (network namespace only), so the bpffs stays visible.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `read` again until the census it shows (its time, Unix milliseconds) was taken at
/// or after `since`, for at most [`CENSUS_WAIT`].
fn counted_after<T: std::fmt::Display>(
    since: std::time::SystemTime,
    mut read: impl FnMut() -> anyhow::Result<(T, Option<u64>)>,
) -> anyhow::Result<T> {
    let since_ms = since.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let deadline = Instant::now() + CENSUS_WAIT;
    loop {
        let (v, taken) = read()?;
        if taken.is_some_and(|t| t >= since_ms) {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "no census after {since_ms} within {CENSUS_WAIT:?}:\n{v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long [`Topology::status_counted_after`] waits for the daemon's next census:
/// two of its default intervals and a margin.
const CENSUS_WAIT: Duration = Duration::from_secs(25);

/// A unique name for this process: `ef-<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    format!("ef-{what}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A named network namespace, deleted on drop unless it is an alias of another.
pub struct Netns {
    pub name: String,
    owned: bool,
}

impl Netns {
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let name = unique(what);
        ip(&["netns", "add", &name])?;
        let ns = Self { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Interfaces made later skip duplicate address detection: their addresses,
        // link-local ones included, are usable at once, so the first packets of a
        // test do not race DAD.
        ns.enter(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/accept_dad", "0")
        })??;
        Ok(ns)
    }

    /// Another handle on the same namespace, which does not delete it.
    pub fn alias(&self) -> Self {
        Self { name: self.name.clone(), owned: false }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ...`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Run `f` on a thread inside this namespace. Sockets it creates stay in the
    /// namespace wherever they are used later.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let ns = File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we opened; it changes this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }

    /// A command run in this namespace (network namespace only, via nsenter).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Add `cidr` (`203.0.113.11/24`, `2001:db8:203::11/64`) to `dev`, usable at
    /// once (IPv6 without duplicate address detection). An address inside the
    /// prefix the firewall already has on that link needs no route there.
    pub fn add_address(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        if cidr.contains(':') { self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]) } else { self.ip(&["addr", "add", cidr, "dev", dev]) }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip (package iproute2)")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The A/V Edge's own address in the whole-Edge tests and the demo: on the Edge's
/// external NIC beside access-edge, inside the link's prefixes (203.0.113.0/24,
/// 2001:db8:203::/64), so the firewall reaches it without another route.
pub const AV4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 11));
pub const AV6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x11));

/// `[addresses]` entries of the vendor's consolidated Edge, for
/// [`Topology::write_config_with_sets`]: Web Conferencing shares the Access Edge's
/// address, A/V has its own ([`AV4`], [`AV6`]; see [`Topology::add_av_edge`]).
pub const WHOLE_EDGE_SETS: &str = "webconf-edge = [\"203.0.113.10\", \"2001:db8:203::10\"]\nav-edge = [\"203.0.113.11\", \"2001:db8:203::11\"]\n";

/// The outcome of a TCP connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected, and an echo round trip worked.
    Connected,
    /// No answer within the timeout: dropped on the way.
    TimedOut,
    /// Actively refused (RST): the packets got through, nothing listens.
    Refused,
}

/// A listener that echoes every connection, running in the background.
pub fn echo_server(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = ns.enter(move || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connect from `ns` to `addr`, send a line and read it back.
pub fn connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<Outcome> {
    ns.enter(move || outcome(TcpStream::connect_timeout(&addr, timeout), timeout))
}

/// [`connect`] from a chosen local address and port (port 0: any), as a server that
/// binds its outgoing connections to its federation address does.
pub fn connect_from(ns: &Netns, local: SocketAddr, to: SocketAddr, timeout: Duration) -> anyhow::Result<Outcome> {
    ns.enter(move || {
        let domain = if to.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let stream = socket2::Socket::new(domain, socket2::Type::STREAM, None).and_then(|s| {
            s.set_reuse_address(true)?;
            s.bind(&local.into())?;
            s.connect_timeout(&to.into(), timeout)?;
            Ok(TcpStream::from(s))
        });
        outcome(stream, timeout)
    })
}

fn outcome(stream: std::io::Result<TcpStream>, timeout: Duration) -> Outcome {
    match stream {
        Ok(mut s) => {
            s.set_read_timeout(Some(timeout)).ok();
            let ok = s.write_all(b"<stream/>\n").is_ok() && {
                let mut buf = [0u8; 10];
                s.read_exact(&mut buf).is_ok()
            };
            if ok { Outcome::Connected } else { Outcome::TimedOut }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(_) => Outcome::TimedOut,
    }
}

/// The outcome of a UDP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// The answer came back (the same bytes, from a [`udp_echo_server`]).
    Answered,
    /// Nothing within the timeout: the request or its answer was dropped on the way.
    NoAnswer,
    /// An ICMP port unreachable came back: the request got through, nothing listens.
    Unreachable,
}

/// A UDP server that answers every datagram with its own bytes, in the background.
/// Its thread ends once the namespace is gone, so it does not outlive the test's
/// topology by more than a moment.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let socket = ns.enter(move || UdpSocket::bind(addr))?.with_context(|| format!("bind UDP {addr} in {}", ns.name))?;
    // A short read timeout, so the thread can notice that its namespace went away.
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let alive = ns.path();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = socket.send_to(&buf[..n], from);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if !alive.exists() {
                        break;
                    }
                }
                // An ICMP error for an earlier answer, reported on the socket.
                Err(_) => {}
            }
        }
    });
    Ok(())
}

/// Send `payload` from `local` (port 0: any) in `ns` to `to`, and wait up to
/// `timeout` for the same bytes to come back.
pub fn datagram(ns: &Netns, local: SocketAddr, to: SocketAddr, payload: &[u8], timeout: Duration) -> anyhow::Result<Datagram> {
    let payload = payload.to_vec();
    ns.enter(move || -> anyhow::Result<Datagram> {
        let s = UdpSocket::bind(local).with_context(|| format!("bind UDP {local}"))?;
        // Connected, so that only `to` can answer and an ICMP error is reported.
        s.connect(to)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&payload)?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            match s.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => return Ok(Datagram::Answered),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Datagram::Unreachable),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(Datagram::NoAnswer);
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Ok(Datagram::NoAnswer);
            }
        }
    })?
}

/// [`open_stream`] from a chosen local address (port 0: any): how an Edge with
/// several addresses on one NIC opens a connection from the right one.
pub fn open_stream_from(ns: &Netns, local: SocketAddr, to: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let s = ns.enter(move || -> std::io::Result<TcpStream> {
        let domain = if to.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        s.bind(&local.into())?;
        s.connect_timeout(&to.into(), timeout)?;
        Ok(TcpStream::from(s))
    })??;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// An open connection kept for later use (from inside its namespace).
pub fn open_stream(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let s = ns.enter(move || TcpStream::connect_timeout(&addr, timeout))??;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// One echo round trip on an open connection.
pub fn echo(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 5];
    stream.write_all(b"ping\n").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

/// The `edge-filter` binary of this build (built by `cargo xtask test` and `demo`):
/// beside a binary target, one directory up from a test executable in `deps/`.
pub fn edge_filter_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable without a directory")?;
    let candidates = [Some(dir), dir.parent()];
    candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("edge-filter"))
        .find(|b| b.is_file())
        .with_context(|| format!("no edge-filter binary near {}: build it with `cargo build -p edge-filter`", exe.display()))
}

/// The perimeter: four host namespaces and the firewall between them; or, in host
/// mode ([`Topology::host_mode`]), the Edge itself carrying the filter, with the
/// partner and the Front End on its links (then `edge` is an alias of `fw`).
pub struct Topology {
    pub fw: Netns,
    pub partner: Netns,
    pub edge: Netns,
    pub frontend: Netns,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub work: PathBuf,
    pub host_mode: bool,
}

/// One link: a veth from the firewall to a host, with the addresses of each end.
struct Link<'a> {
    fw_dev: &'a str,
    host_dev: &'a str,
    fw_addrs: &'a [&'a str],
    host_addrs: &'a [&'a str],
}

impl Link<'_> {
    fn build(&self, fw: &Netns, host: &Netns) -> anyhow::Result<()> {
        fw.ip(&["link", "add", self.fw_dev, "type", "veth", "peer", "name", self.host_dev, "netns", &host.name])?;
        for (ns, dev, addrs) in [(fw, self.fw_dev, self.fw_addrs), (host, self.host_dev, self.host_addrs)] {
            for a in addrs {
                if a.contains(':') {
                    ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"])?;
                } else {
                    ns.ip(&["addr", "add", a, "dev", dev])?;
                }
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }
}

/// Default routes of the partner and the Front End, through the filtering machine.
fn outside_routes(partner: &Netns, frontend: &Netns) -> anyhow::Result<()> {
    for (ns, v4, v6) in [(partner, "198.51.100.1", "2001:db8:5100::1"), (frontend, "198.18.0.1", "2001:db8:198::1")] {
        ns.ip(&["route", "add", "default", "via", v4])?;
        ns.ip(&["-6", "route", "add", "default", "via", v6])?;
    }
    Ok(())
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let id = unique("t");
        let work = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&work)?;
        let t = Self {
            fw: Netns::new("fw")?,
            partner: Netns::new("partner")?,
            edge: Netns::new("edge")?,
            frontend: Netns::new("frontend")?,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            state_dir: work.join("state"),
            work,
            host_mode: false,
        };
        t.fw.enter(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        })??;
        let links = [
            (
                &t.partner,
                Link {
                    fw_dev: "out0",
                    host_dev: "eth0",
                    fw_addrs: &["198.51.100.1/24", "2001:db8:5100::1/64"],
                    host_addrs: &["198.51.100.20/24", "2001:db8:5100::20/64"],
                },
            ),
            (
                &t.edge,
                Link {
                    fw_dev: "ext0",
                    host_dev: "ext0",
                    fw_addrs: &["203.0.113.1/24", "2001:db8:203::1/64"],
                    host_addrs: &["203.0.113.10/24", "2001:db8:203::10/64"],
                },
            ),
            (
                &t.edge,
                Link {
                    fw_dev: "int0",
                    host_dev: "int0",
                    fw_addrs: &["192.0.2.1/24", "2001:db8:192::1/64"],
                    host_addrs: &["192.0.2.10/24", "2001:db8:192::10/64"],
                },
            ),
            (
                &t.frontend,
                Link {
                    fw_dev: "fe0",
                    host_dev: "eth0",
                    fw_addrs: &["198.18.0.1/24", "2001:db8:198::1/64"],
                    host_addrs: &["198.18.0.20/24", "2001:db8:198::20/64"],
                },
            ),
        ];
        for (host, l) in &links {
            l.build(&t.fw, host)?;
        }
        outside_routes(&t.partner, &t.frontend)?;
        // The Edge: partners through the external NIC, the corporate network through
        // the internal one.
        t.edge.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        t.edge.ip(&["-6", "route", "add", "default", "via", "2001:db8:203::1"])?;
        t.edge.ip(&["route", "add", "198.18.0.0/15", "via", "192.0.2.1"])?;
        t.edge.ip(&["-6", "route", "add", "2001:db8:198::/64", "via", "2001:db8:192::1"])?;
        Ok(t)
    }

    /// Host mode: the Edge's addresses are local to the machine that runs the filter.
    /// Its `ext0` faces the partner (access-edge 203.0.113.10, 2001:db8:203::10, and
    /// the partner's gateway address), its `int0` the Front End (internal-edge
    /// 192.0.2.10, 2001:db8:192::10, and the Front End's gateway).
    pub fn host_mode() -> anyhow::Result<Self> {
        let id = unique("h");
        let work = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&work)?;
        let fw = Netns::new("host")?;
        let t = Self {
            edge: fw.alias(),
            fw,
            partner: Netns::new("partner")?,
            frontend: Netns::new("frontend")?,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&id),
            state_dir: work.join("state"),
            work,
            host_mode: true,
        };
        let ext = ["203.0.113.10/24", "2001:db8:203::10/64", "198.51.100.1/24", "2001:db8:5100::1/64"];
        let int = ["192.0.2.10/24", "2001:db8:192::10/64", "198.18.0.1/24", "2001:db8:198::1/64"];
        Link { fw_dev: "ext0", host_dev: "eth0", fw_addrs: &ext, host_addrs: &["198.51.100.20/24", "2001:db8:5100::20/64"] }
            .build(&t.fw, &t.partner)?;
        Link { fw_dev: "int0", host_dev: "eth0", fw_addrs: &int, host_addrs: &["198.18.0.20/24", "2001:db8:198::20/64"] }
            .build(&t.fw, &t.frontend)?;
        outside_routes(&t.partner, &t.frontend)?;
        Ok(t)
    }

    /// A firewall node of a larger sandbox (a pair's, [`crate::pair`]): `fw` is its
    /// own, the hosts are the sandbox's (aliases here, removed by their owner); `id`
    /// names its pin and work directories.
    pub fn node(fw: Netns, partner: &Netns, edge: &Netns, frontend: &Netns, id: &str) -> anyhow::Result<Self> {
        let work = std::env::temp_dir().join(id);
        std::fs::create_dir_all(&work)?;
        Ok(Self {
            fw,
            partner: partner.alias(),
            edge: edge.alias(),
            frontend: frontend.alias(),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(id),
            state_dir: work.join("state"),
            work,
            host_mode: false,
        })
    }

    /// The config file for the plan's roles, with `extra` TOML appended.
    pub fn write_config(&self, extra: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.join("edge-filter.toml");
        std::fs::write(&path, format!("{}\n{extra}", self.base_config()))?;
        Ok(path)
    }

    /// Write `text` to the file `name` in the work directory; its path.
    pub fn work_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.work.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// [`Topology::write_config`] with more `[addresses]` entries: `sets` is TOML
    /// lines such as [`WHOLE_EDGE_SETS`] (a second `[addresses]` table would be a TOML
    /// error, and [`Topology::base_config`] ends with that table).
    pub fn write_config_with_sets(&self, sets: &str, extra: &str) -> anyhow::Result<PathBuf> {
        let base = self.base_config();
        debug_assert!(base.rsplit("\n[").next().is_some_and(|t| t.starts_with("addresses]")), "base_config ends with [addresses]");
        let path = self.work.join("edge-filter.toml");
        std::fs::write(&path, format!("{base}{sets}\n{extra}"))?;
        Ok(path)
    }

    /// Give the Edge its A/V address ([`AV4`], [`AV6`]) on its external NIC, beside
    /// access-edge. The Edge's own connections then need a chosen source address
    /// ([`connect_from`], [`open_stream_from`]): for IPv6 the kernel may pick either.
    pub fn add_av_edge(&self) -> anyhow::Result<()> {
        self.edge.add_address("ext0", "203.0.113.11/24")?;
        self.edge.add_address("ext0", "2001:db8:203::11/64")
    }

    /// Keep the hosts' ephemeral ports (partner, Edge, Front End) below the vendor's
    /// media range 50000-59999. Linux picks them from 32768-60999, and an answer
    /// between the A/V Edge and an ephemeral port inside the range would itself open
    /// an `rtp-*` row: it would pass, but count as that row's hit instead of
    /// `pass/reply`, so a test could not say which row it saw.
    pub fn ephemeral_ports_below_media_range(&self) -> anyhow::Result<()> {
        for ns in [&self.partner, &self.edge, &self.frontend] {
            ns.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "32768 49999"))??;
        }
        Ok(())
    }

    pub fn base_config(&self) -> String {
        let nics: &[(&str, &str)] = if self.host_mode {
            &[("ext0", "host"), ("int0", "host")]
        } else {
            &[("out0", "outside"), ("fe0", "outside"), ("ext0", "edge"), ("int0", "edge")]
        };
        let mut config: String = nics.iter().map(|(name, role)| format!("[[interface]]\nname = \"{name}\"\nrole = \"{role}\"\n\n")).collect();
        config.push_str(
            "[addresses]\naccess-edge = [\"203.0.113.10\", \"2001:db8:203::10\"]\ninternal-edge = [\"192.0.2.10\", \"2001:db8:192::10\"]\n",
        );
        config
    }

    /// `edge-filter` in the firewall namespace, with this topology's directories.
    pub fn edge_filter(&self) -> anyhow::Result<Command> {
        let mut c = self.fw.command(edge_filter_bin()?);
        c.env("EDGE_FILTER_PIN_DIR", &self.pin_dir).env("EDGE_FILTER_STATE_DIR", &self.state_dir);
        Ok(c)
    }

    /// `edge-filter ARGS`, run to completion.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.edge_filter()?.args(args).output()?)
    }

    /// Start the daemon and wait until every configured NIC has its link.
    pub fn start(&self, config: &Path) -> anyhow::Result<Daemon> {
        self.start_with_env(config, &[])
    }

    /// [`Topology::start`] with extra environment for the daemon.
    pub fn start_with_env(&self, config: &Path, env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        let nics = std::fs::read_to_string(config)?.matches("[[interface]]").count();
        let log = self.work.join(format!("daemon-{}.log", SEQ.fetch_add(1, Ordering::Relaxed)));
        // One open file description for both streams, appending.
        File::create(&log)?;
        let out = File::options().append(true).open(&log)?;
        let child = self
            .edge_filter()?
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut daemon = Daemon { child: Some(child), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let links: Vec<_> = std::fs::read_dir(self.pin_dir.join("links")).map(|d| d.flatten().collect()).unwrap_or_default();
            if links.len() == nics && daemon.log_text().contains("enforcing") {
                return Ok(daemon);
            }
            if let Some(st) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("edge-filter run exited ({st}):\n{}", daemon.log_text());
            }
            if Instant::now() > deadline {
                bail!("edge-filter run did not attach within 20 s:\n{}", daemon.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics from inside the firewall namespace.
    /// `status --json` once it shows the daemon's census of the state tables taken
    /// after `since`: the daemon counts them every `state.census-interval`, so a
    /// count read right after traffic may predate it. Until the daemon has published
    /// its first census `status` counts for itself; that count is not the daemon's
    /// and is waited past.
    pub fn status_counted_after(&self, since: std::time::SystemTime) -> anyhow::Result<serde_json::Value> {
        counted_after(since, || {
            let out = self.cli(&["status", "--json"])?;
            ensure!(out.status.success(), "status --json: {}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let taken = v["census"]["taken_unix_ms"].as_u64().filter(|_| v["census"]["by"] == "daemon");
            Ok((v, taken))
        })
    }

    /// [`Topology::metrics`] once the scrape shows a census taken after `since`
    /// (`edge_filter_census_timestamp_seconds`).
    pub fn metrics_counted_after(&self, addr: SocketAddr, since: std::time::SystemTime) -> anyhow::Result<String> {
        counted_after(since, || {
            let body = self.metrics(addr)?;
            let taken = body
                .lines()
                .find_map(|l| l.strip_prefix("edge_filter_census_timestamp_seconds "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|s| (s * 1e3).round() as u64);
            Ok((body, taken))
        })
    }

    pub fn metrics(&self, addr: SocketAddr) -> anyhow::Result<String> {
        self.fw.enter(move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            ensure!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "GET /metrics: {body}");
            Ok(body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
        })?
    }
}

impl Topology {
    /// Leave the namespaces, pins and files in place (the demo's `--keep`).
    pub fn keep(self) {
        // Forgetting the topology skips every guard in it: nothing is removed.
        std::mem::forget(self);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The daemon lock and census outlive a daemon that was killed rather than stopped.
        let pins = edge_filter::pins::Pins::new(&self.pin_dir);
        let _ = std::fs::remove_file(pins.daemon_lock_path());
        let _ = std::fs::remove_file(pins.census_path());
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// A running `edge-filter run`; killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// The daemon's process id (`nsenter` execs it, so this is edge-filter's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Leave the daemon running after this handle goes (the demo's `--keep`); its pid.
    pub fn keep(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    /// SIGTERM and wait for the exit; the exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("already stopped")?;
        terminate(&mut c, "edge-filter run", Duration::from_secs(10))
    }
}

/// SIGTERM to a child process of the test, and its exit status once it ends; past
/// `grace` it is killed (and waited for) and that is an error naming `what`.
pub fn terminate(child: &mut Child, what: &str, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
    if let Some(st) = child.try_wait()? {
        return Ok(st);
    }
    // SAFETY: kill on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} ignored SIGTERM for {grace:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Packets of (interface, action, reason) in a `stats --json` document.
pub fn packets(stats: &serde_json::Value, iface: &str, action: &str, reason: &str) -> u64 {
    stats["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .filter(|r| r["interface"] == iface && r["action"] == action && r["reason"] == reason)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

/// Hits of a row, by id, in a `stats --json` document.
pub fn rule_hits(stats: &serde_json::Value, rule: &str) -> u64 {
    stats["rules"].as_array().expect("rules").iter().find(|r| r["rule"] == rule).map_or(0, |r| r["packets"].as_u64().unwrap())
}

impl Topology {
    /// `stats --json`, which must succeed.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(&["stats", "--json"])?;
        ensure!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Another tool's XDP program on the firewall's `dev` (a second, unpinned load of
    /// edge-filter's object, attached in generic mode), and its program id; it is
    /// detached when the returned filter is dropped.
    pub fn foreign_xdp(&self, dev: &'static str) -> anyhow::Result<(edge_filter::Filter, u32)> {
        self.fw.enter(move || -> anyhow::Result<_> {
            let mut f = edge_filter::Filter::load(&edge_filter::LoadOptions::default())?;
            let ix = edge_filter::pins::ifindex(dev)?;
            f.program_mut()?.attach_to_if_index(ix, aya::programs::XdpMode::Skb)?;
            let id = f.program()?.info()?.id();
            Ok((f, id))
        })?
    }
}

/// `ip:port` for a socket address built from an `IpAddr` and a port.
pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = Command::new("ip").args(["-n", &ns.name, "-j", "link", "show", "dev", dev]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    mac_in(&v[0])
}

/// The MAC address of a device in `ip -json link show` output.
pub fn mac_in(link: &serde_json::Value) -> anyhow::Result<[u8; 6]> {
    let text = link["address"].as_str().context("no address")?;
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// Transmit `count` copies of `frame` out of `dev` in `ns` with the in-kernel traffic
/// generator (BPF_PROG_TEST_RUN, live frames), each from another source address and
/// port. Returns how long the kernel took.
pub fn flood(ns: &Netns, dev: &'static str, frame: Vec<u8>, count: u32) -> anyhow::Result<Duration> {
    ns.enter(move || -> anyhow::Result<Duration> {
        use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
        let mut ebpf = aya::Ebpf::load(crate::programs::TRAFFIC_GEN).context("load the traffic generator")?;
        let prog: &mut Xdp = ebpf.program_mut("traffic_gen").context("traffic_gen")?.try_into()?;
        prog.load()?;
        let ifindex = edge_filter::pins::ifindex(dev)?;
        let ctx = edge_filter::loader::xdp_md(frame.len(), ifindex);
        let start = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN with live frames")?;
        Ok(start.elapsed())
    })?
}

/// Send a raw frame out of `dev` in the calling thread's network namespace (an
/// AF_PACKET socket).
pub fn inject(dev: &str, frame: &[u8]) -> anyhow::Result<()> {
    inject_all(dev, [frame])
}

/// [`inject`] every frame, in order, through one socket (closing an AF_PACKET socket
/// waits for an RCU grace period: one per frame would take milliseconds each).
pub fn inject_all<'a>(dev: &str, frames: impl IntoIterator<Item = &'a [u8]>) -> anyhow::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)?;
    let ifindex = edge_filter::pins::ifindex(dev)?;
    for frame in frames {
        // SAFETY: a zeroed sockaddr_ll is valid; sendto reads `frame` and the address
        // for the lengths given, on a socket we own.
        let sent = unsafe {
            let mut ll: libc::sockaddr_ll = std::mem::zeroed();
            ll.sll_family = libc::AF_PACKET as u16;
            ll.sll_ifindex = ifindex as i32;
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(sent == frame.len() as isize, "sendto on {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
