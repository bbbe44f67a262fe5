//! [`workspace_bin`]: where the binaries of this workspace are built.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Path of a binary built from this workspace, for integration tests of
/// other crates, e.g. `workspace_bin("ostq")` is `target/debug/ostq`.
///
/// Test executables live in `<target>/<profile>/deps/`, so the binary is
/// looked up next to that `deps` directory, which follows the profile and any
/// `--target` triple. When the current executable's path is unknown, or the
/// binary is not there, `CARGO_TARGET_DIR` (default `target` in the workspace
/// root) plus `debug` is used. The path is returned even if the file does not
/// exist; the binary must have been built (`cargo test` builds a package's
/// binaries before its integration tests; inside the package that owns the
/// binary, `env!("CARGO_BIN_EXE_<name>")` is an alternative).
///
/// ```no_run
/// let ostq = ostq_testkit::workspace_bin("ostq");
/// let status = std::process::Command::new(ostq).arg("--help").status()?;
/// assert!(status.success());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn workspace_bin(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.file_name() == Some(OsStr::new("deps")) {
            dir.parent()?
        } else {
            dir
        };
        Some(dir.join(&file))
    });
    if let Some(path) = &from_exe {
        if path.exists() {
            return path.clone();
        }
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let from_env = target_dir.join("debug").join(&file);
    if from_env.exists() {
        return from_env;
    }
    from_exe.unwrap_or(from_env)
}

/// The workspace root: two levels above this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn workspace_bin_points_into_the_target_dir() {
        let path = workspace_bin("ostq");
        assert_eq!(path.file_name(), Some(OsStr::new("ostq")));
        let exe = std::env::current_exe().unwrap();
        // Test binaries are in <target>/<profile>/deps/.
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        if !path.exists() {
            assert_eq!(path.parent(), Some(profile_dir));
        }
    }
}
