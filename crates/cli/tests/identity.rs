//! `weft identity` and `weft controller --identity-dir` as a user runs them.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(WEFT).args(args).output().expect("running weft")
}

#[test]
fn init_token_and_rotate() {
    let tmp = TempDir::new("init");
    let dir = tmp.0.join("identity");
    let dir = dir.to_str().unwrap();
    let out = weft(&["identity", "init", dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ca.crt") && stdout.contains("valid 3650 days"), "{stdout}");
    assert!(stdout.contains("issuer.crt") && stdout.contains("valid 365 days"), "{stdout}");

    // Never over an existing identity.
    let again = weft(&["identity", "init", dir]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds an identity"));

    let token = weft(&["identity", "token", "--dir", dir, "--namespace", "shop", "--service-account", "web"]);
    assert!(token.status.success());
    assert!(String::from_utf8_lossy(&token.stdout).starts_with("weft1."));
    let file = tmp.0.join("web.token");
    let out = weft(&[
        "identity",
        "token",
        "--dir",
        dir,
        "--namespace",
        "shop",
        "--service-account",
        "web",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let bad = weft(&["identity", "token", "--dir", dir, "--namespace", "Shop", "--service-account", "web"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DNS label"));

    let before = std::fs::read(tmp.0.join("identity/issuer.crt")).unwrap();
    assert!(weft(&["identity", "rotate-issuer", dir]).status.success());
    assert_ne!(before, std::fs::read(tmp.0.join("identity/issuer.crt")).unwrap());
}

#[test]
fn the_controller_refuses_an_issuer_that_does_not_match_its_key() {
    let tmp = TempDir::new("refuse");
    let dir = tmp.0.join("identity");
    assert!(weft(&["identity", "init", dir.to_str().unwrap()]).status.success());
    let store = tmp.0.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let controller = |dir: &std::path::Path| {
        Command::new(WEFT)
            .args(["controller", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--store"])
            .arg(&store)
            .arg("--identity-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // A good identity directory: it serves.
    let mut good = controller(&dir);
    let stderr = BufReader::new(good.stderr.take().unwrap());
    let serving = stderr.lines().map_while(Result::ok).find(|l| l.contains("weft controller is serving"));
    let _ = good.kill();
    let _ = good.wait();
    assert!(serving.is_some_and(|l| l.contains("identity=true")));

    // The anchor's key in place of the issuer's.
    std::fs::copy(dir.join("ca.key"), dir.join("issuer.key")).unwrap();
    let out = controller(&dir).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--identity-dir") && stderr.contains("does not match"), "{stderr}");

    // No identity there at all.
    let out = controller(&tmp.0.join("nowhere")).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("weft identity init"));
}

#[test]
fn shell_completions_are_printed() {
    let out = weft(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_weft()") && script.contains("demo") && script.contains("stat"), "{script}");
    assert_eq!(weft(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is refused");
}
