//! `cargo xtask kernels`: the programs proved on the kernels operators run.
//!
//! For Debian's 5.10 (bullseye), 6.1 and 6.12 (bookworm, bookworm-security): download
//! the newest kernel package with apt state of our own (nothing under `/etc/apt`),
//! build an initramfs (busybox, the kernel's own veth module, the statically linked
//! `kernel-check` from `tests/src/bin`), boot it with qemu and read the verdict the
//! check prints. The host's kernel runs the same check directly. One line per kernel;
//! any FAIL fails the command. Downloads are cached under `target/kernels`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::setup::{output, status};

/// The kernel series and how Debian names their newest image package.
const SERIES: &[(&str, &str, &str)] =
    &[("5.10", "linux-image-5.10.0-", "-amd64"), ("6.1", "linux-image-6.1.0-", "-amd64"), ("6.12", "linux-image-6.12.", "+deb12-amd64")];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

const MARK: &str = "EDGE-FILTER-KERNEL-CHECK: ";
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_owned()
}

/// apt with state of its own under `dir`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn args(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDebug::NoLocking=1".into(),
            // Downloads go to a directory of ours, which apt's sandbox user cannot write.
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn update(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir.join("lists/partial"))?;
        std::fs::create_dir_all(self.dir.join("cache/archives/partial"))?;
        std::fs::write(self.dir.join("sources.list"), SOURCES)?;
        let fresh = std::fs::metadata(self.dir.join("updated"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < Duration::from_secs(12 * 3600)));
        if !fresh {
            status(Command::new("apt-get").arg("-q").args(self.args()).arg("update"))?;
            std::fs::write(self.dir.join("updated"), "")?;
        }
        Ok(())
    }

    /// The newest package `prefix<N>suffix` (by the number N, the ABI or patch level).
    fn newest(&self, prefix: &str, suffix: &str) -> anyhow::Result<String> {
        let names = output(Command::new("apt-cache").args(self.args()).args(["pkgnames", prefix]))?;
        names
            .lines()
            .filter_map(|n| Some((n.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<u32>().ok()?, n)))
            .max()
            .map(|(_, n)| n.to_owned())
            .with_context(|| format!("no package {prefix}N{suffix} in the Debian archive"))
    }

    /// The .deb of `package`, downloaded once.
    fn fetch(&self, package: &str, into: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        let find = || -> Option<PathBuf> {
            std::fs::read_dir(into)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb")))
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        println!("kernels: downloading {package}");
        status(Command::new("apt-get").arg("-q").args(self.args()).args(["download", package]).current_dir(into))?;
        find().with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// The statically linked check.
fn build_check(target: &Path) -> anyhow::Result<PathBuf> {
    status(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "--package", "edge-filter-tests", "--bin", "kernel-check"])
            .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
            .arg(target)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(target.join("x86_64-unknown-linux-gnu/release/kernel-check"))
}

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp /dev /run /bin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
insmod /veth.ko
ip link set lo up
/kernel-check
poweroff -f
";

/// vmlinuz and an initramfs for the kernel in `deb`.
fn prepare(deb: &Path, work: &Path, check: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let tree = work.join("tree");
    if !tree.exists() {
        std::fs::create_dir_all(work)?;
        status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
    }
    let vmlinuz = std::fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
        .context("no vmlinuz in the package")?;
    let modules = std::fs::read_dir(tree.join("lib/modules"))?.flatten().next().context("no modules")?.path();
    let veth = modules.join("kernel/drivers/net/veth.ko");
    let root = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    if veth.exists() {
        std::fs::copy(&veth, root.join("veth.ko"))?;
    } else {
        let packed = ["xz", "zst"].iter().map(|e| veth.with_extension(format!("ko.{e}"))).find(|p| p.exists()).context("no veth module")?;
        let tool = if packed.extension().is_some_and(|e| e == "xz") { "xz" } else { "zstd" };
        let out = Command::new(tool).arg("-dc").arg(&packed).output()?;
        ensure!(out.status.success(), "{tool} -dc {}", packed.display());
        std::fs::write(root.join("veth.ko"), out.stdout)?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    std::fs::copy(check, root.join("kernel-check"))?;
    std::fs::write(root.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let img = work.join("initramfs.cpio.gz");
    status(Command::new("sh").arg("-c").arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > {}", img.display())).current_dir(&root))?;
    Ok((vmlinuz, img))
}

/// Boot and return the check's verdict line and the console output.
fn boot(vmlinuz: &Path, initrd: &Path) -> anyhow::Result<(String, String)> {
    let accel = if Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists() { "kvm" } else { "tcg" };
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-cpu", "max", "-m", "1024", "-smp", "2", "-no-reboot", "-nographic", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut console = String::new();
    let mut verdict = None;
    while start.elapsed() < BOOT_TIMEOUT {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if let Some(v) = line.find(MARK).map(|i| line[i + MARK.len()..].trim().to_owned()) {
                    verdict = Some(v);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if child.try_wait()?.is_some() && verdict.is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    match verdict {
        Some(v) => Ok((v, console)),
        None => bail!("no verdict within {} s; console:\n{console}", BOOT_TIMEOUT.as_secs()),
    }
}

pub(crate) fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the kernel matrix checks BPF as root: run as root");
    let root = workspace().join("target/kernels");
    let apt = Apt { dir: root.join("apt") };
    apt.update()?;
    let check = build_check(&root.join("build"))?;
    let mut lines = Vec::new();
    let mut failed = false;
    for (series, prefix, suffix) in SERIES {
        let package = apt.newest(prefix, suffix)?;
        let deb = apt.fetch(&package, &root.join("debs"))?;
        let work = root.join(&package);
        let result = prepare(&deb, &work, &check).and_then(|(k, i)| boot(&k, &i));
        let line = match result {
            Ok((v, console)) => {
                if !v.starts_with("PASS") {
                    failed = true;
                    eprintln!("--- console of {package} ---\n{console}");
                }
                format!("kernel {series} ({package}): {v}")
            }
            Err(e) => {
                failed = true;
                format!("kernel {series} ({package}): FAIL {e:#}")
            }
        };
        println!("{line}");
        lines.push(line);
    }
    let host = Command::new(&check).output().context("run kernel-check on the host")?;
    let text = String::from_utf8_lossy(&host.stdout);
    let v = text.lines().find_map(|l| l.strip_prefix(MARK)).unwrap_or("FAIL no verdict").to_owned();
    failed |= !v.starts_with("PASS");
    let line = format!("kernel host: {v}");
    println!("{line}");
    lines.push(line);
    println!("\nkernel matrix:");
    for l in &lines {
        println!("  {}", l.lines().next().unwrap_or(""));
    }
    ensure!(!failed, "the kernel matrix has failures");
    Ok(())
}
