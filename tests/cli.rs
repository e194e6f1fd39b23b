//! `xdplb check`: the shipped configs validate; a bad one is rejected with
//! file, key and reason and a non-zero exit. Needs no root.

use std::process::Command;

use xdplb_tests::target_bin;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(target_bin("xdplb"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shipped_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            // The HA examples name the key as installed; check them with a
            // real key file (mode 600) in its place.
            let text = std::fs::read_to_string(&p).unwrap();
            let checked = if text.contains("/etc/xdplb/ha.key") {
                use std::os::unix::fs::PermissionsExt as _;
                let tmp = std::env::temp_dir().join(format!("xdplb-cli-{}", std::process::id()));
                std::fs::create_dir_all(&tmp).unwrap();
                let key = tmp.join("ha.key");
                std::fs::write(&key, [7u8; 32]).unwrap();
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
                let copy = tmp.join(p.file_name().unwrap());
                std::fs::write(
                    &copy,
                    text.replace("/etc/xdplb/ha.key", key.to_str().unwrap()),
                )
                .unwrap();
                copy
            } else {
                p.clone()
            };
            let (ok, out) = check(&checked);
            assert!(ok, "{}: {out}", p.display());
            assert!(out.contains(": ok ("), "{out}");
            n += 1;
        }
    }
    assert!(n >= 3, "the configs in {}", dir.display());
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("xdplb-cli-{}", std::process::id())),
    );
}

#[test]
fn bad_config_is_rejected_with_file_key_and_reason() {
    let path = std::env::temp_dir().join(format!("xdplb-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[service]]\nname = \"www\"\nvip = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"dsr\"\n[[service.backend]]\naddress = \"203.0.113.11\"\nport = 8080\n",
    )
    .unwrap();
    let (ok, out) = check(&path);
    std::fs::remove_file(&path).ok();
    assert!(!ok, "must fail: {out}");
    assert!(
        out.contains(&path.display().to_string()),
        "names the file: {out}"
    );
    assert!(
        out.contains("service[0].backend[0].port"),
        "names the key: {out}"
    );
    assert!(
        out.contains("DSR forwards without rewriting ports"),
        "gives the reason: {out}"
    );
}

/// A stale PID file whose PID now belongs to another program: `stop`
/// refuses, saying why, and does not signal it. (A `sleep` dies of the
/// SIGTERM `stop` would send, so its survival shows nothing was sent.)
#[test]
fn a_stale_pid_file_naming_another_program_is_not_signalled() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid_file = std::env::temp_dir().join(format!("xdplb-stale-{}.pid", std::process::id()));
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    let mut outputs = Vec::new();
    for args in [&["stop"][..], &["stop", "--keep-running"]] {
        let out = Command::new(target_bin("xdplb"))
            .args(args)
            .arg("--pid-file")
            .arg(&pid_file)
            .output()
            .unwrap();
        outputs.push((args, out));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let still_running = sleeper.try_wait().unwrap().is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    std::fs::remove_file(&pid_file).ok();
    for (args, out) in outputs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "xdplb {args:?} succeeded: {err}");
        assert!(
            err.contains("not an xdplb daemon") && err.contains("\"sleep\""),
            "xdplb {args:?}: {err}"
        );
    }
    assert!(still_running, "the sleep process was signalled");
}
