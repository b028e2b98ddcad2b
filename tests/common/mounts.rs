//! Real mounts for the watch-mode and poll scenarios: an ext4 with
//! whole-second timestamps on a loop device, and a FUSE mount (`bindfs`)
//! whose source directory can be written beside the mount, the way another
//! machine writes to a network filesystem. Each is unmounted on drop, also
//! when the test fails.
//!
//! They need root, `/dev/fuse`, `bindfs`, `mkfs.ext4`, `losetup`; without
//! them a test is skipped with a reason, unless `DISTLINK_REQUIRE_TOOLS=1`
//! (CI sets it), which makes it fail instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Env;

fn found(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/sbin").join(tool).is_file()
        || Path::new("/usr/sbin").join(tool).is_file()
}

/// Why a test needing `tools` (and root) cannot run here, if it cannot.
pub fn missing(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (needs mounts)".into());
    }
    for tool in tools {
        if !found(tool) {
            return Some(format!(
                "{tool} not found (Debian: bindfs, fuse3, e2fsprogs, mount)"
            ));
        }
    }
    if tools.contains(&"bindfs") && !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    None
}

/// Skips (false, with a printed reason) or, under
/// `DISTLINK_REQUIRE_TOOLS=1`, fails.
pub fn can_run(why: Option<String>) -> bool {
    let Some(why) = why else {
        return true;
    };
    assert!(
        std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "DISTLINK_REQUIRE_TOOLS=1 but this test cannot run: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn quiet(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A mount on `dir`, undone on drop.
pub struct Mounted {
    pub dir: PathBuf,
    /// The loop image, to free its device.
    image: Option<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !quiet(Command::new("umount").arg(&self.dir)) {
            // Still busy (a daemon being killed): detach it now.
            quiet(Command::new("umount").arg("-l").arg(&self.dir));
        }
        if let Some(image) = &self.image
            && let Ok(out) = Command::new("losetup").arg("-j").arg(image).output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next().filter(|d| !d.is_empty()) {
                    quiet(Command::new("losetup").args(["-d", dev]));
                }
            }
        }
    }
}

/// Makes an ext4 with 128-byte inodes (timestamps in whole seconds, no
/// birth time) in `image` and mounts it on `dir`.
pub fn ext4_whole_seconds(image: &Path, dir: &Path) -> Result<Mounted, String> {
    fs::File::create(image)
        .and_then(|f| f.set_len(32 << 20))
        .map_err(|e| format!("cannot make {}: {e}", image.display()))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-I", "128", "-N", "4096"])
        .arg(image))?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(image)
        .arg(dir))?;
    Ok(Mounted {
        dir: dir.to_path_buf(),
        image: Some(image.to_path_buf()),
    })
}

/// Mounts `src` on `dir` with bindfs (FUSE, inode numbers passed
/// through, so hard links show as one inode).
pub fn bindfs(src: &Path, dir: &Path) -> Result<Mounted, String> {
    run(Command::new("bindfs")
        .args(["-o", "use_ino"])
        .arg(src)
        .arg(dir))?;
    Ok(Mounted {
        dir: dir.to_path_buf(),
        image: None,
    })
}

/// A test root on a FUSE mount: the host dirs live in `source`, and the
/// root distlink is given (`env.root`) is a bindfs mount of it. Writing
/// in `source` is writing beside the mount, which no inotify watch on the
/// mount sees.
pub struct FuseRoot {
    // Dropped first: the mount goes before the temp dir.
    pub mount: Mounted,
    pub source: PathBuf,
    pub env: Env,
}

impl FuseRoot {
    pub fn new(hosts: &[&str]) -> Result<FuseRoot, String> {
        let env = Env::new(hosts);
        let source = env.tmp.path().join("source");
        fs::rename(&env.root, &source).map_err(|e| e.to_string())?;
        fs::create_dir(&env.root).map_err(|e| e.to_string())?;
        let mount = bindfs(&source, &env.root)?;
        Ok(FuseRoot { mount, source, env })
    }

    /// Writes a file in the source tree (beside the mount), then renames it
    /// into `host`: Portage on another machine.
    pub fn move_in_beside(&self, host: &str, name: &str, data: &[u8]) {
        let staged = self.source.join(".staging");
        fs::write(&staged, data).expect("write staged");
        fs::rename(&staged, self.source.join(host).join(name)).expect("rename staged");
    }

    /// The inode of `host/name` seen in the source tree.
    pub fn ino_beside(&self, host: &str, name: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(self.source.join(host).join(name))
            .ok()
            .map(|m| m.ino())
    }
}
