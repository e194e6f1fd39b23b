//! MySQL role checks against real MariaDB servers.

use std::time::{Duration, Instant};

use xdplb_tests::{Netns, ProcessGuard, require_root};

use crate::lab::*;

/// A MariaDB server in a backend namespace, its data under the temp dir;
/// shut down (SIGTERM) and removed on drop.
struct Mariadb {
    process: ProcessGuard,
    dir: std::path::PathBuf,
}

impl Mariadb {
    fn start(ns: &Netns) -> Mariadb {
        let dir = std::env::temp_dir().join(format!("{}-mariadb", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let out = std::process::Command::new("mariadb-install-db")
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (cargo xtask setup installs mariadb-server-core)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args: Vec<String> = vec![
            "mariadbd".into(),
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", dir.join("sock").display()),
            format!("--pid-file={}", dir.join("pid").display()),
            "--bind-address=0.0.0.0".into(),
            "--port=3306".into(),
            "--skip-log-bin".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=16M".into(),
        ];
        let mut process = ProcessGuard::spawn(&format!("mariadbd@{}", ns.name), &ns.name, &args);
        process.wait_for("ready for connections", Duration::from_secs(60));
        let m = Mariadb { process, dir };
        m.sql(
            "CREATE USER xdplb_check@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('pw')",
        );
        m
    }

    /// Run SQL as root over the server's Unix socket.
    fn sql(&self, q: &str) -> String {
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-N", "-S"])
            .arg(self.dir.join("sock"))
            .args(["-e", q])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `SELECT @@global.read_only` through a VIP from the client namespace, as
/// the check's user, on a new connection.
fn read_only_via(client: &Netns, vip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "mariadb",
            "--no-defaults",
            "--connect-timeout=3",
            "-h",
            vip,
        ])
        .args([
            "-u",
            "xdplb_check",
            "-ppw",
            "-N",
            "-e",
            "SELECT @@global.read_only",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "via {vip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Scrape until `backend_up(writer b1, writer b2, reader b1, reader b2)`
/// equals `want`, or panic after `timeout`. Returns how long it took.
fn wait_roles(lab: &Lab, want: [f64; 4], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let m = scrape(lab);
        let up = |svc: &str, b: &str| {
            m.lines()
                .find(|l| {
                    l.starts_with("xdplb_backend_up{")
                        && l.contains(&format!("service=\"{svc}\""))
                        && l.contains(&format!("backend=\"{b}:3306\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let got = [
            up("mysql-writer", "203.0.113.11"),
            up("mysql-writer", "203.0.113.21"),
            up("mysql-reader", "203.0.113.11"),
            up("mysql-reader", "203.0.113.21"),
        ];
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "roles {got:?}, want {want:?} after {timeout:?}:\n{}",
            lab.daemon.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A writer VIP follows the MySQL primary and a reader VIP the replica, by
/// the check's role test against real MariaDB servers, also when the roles
/// swap.
#[test]
fn mysql_role_checks_follow_the_primary() {
    let test = "mysql_role_checks_follow_the_primary";
    if !require_root(test) {
        return;
    }
    let service = |name: &str, vip: &str, role: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 3306\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 3306 }}, {{ address = \"203.0.113.21\", port = 3306 }}]\n[service.check]\nkind = \"mysql\"\nmysql_role = \"{role}\"\nmysql_user = \"xdplb_check\"\nmysql_password = \"pw\"\ninterval_ms = 300\ntimeout_ms = 250\nrise = 2\nfall = 2\n"
        )
    };
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}{}",
        service("mysql-writer", "192.0.2.20", "read_write"),
        service("mysql-reader", "192.0.2.21", "read_only")
    );
    let lab = lab_with(Mode::Native, &config);
    let db1 = Mariadb::start(&lab.backends[0]);
    let db2 = Mariadb::start(&lab.backends[1]);
    db2.sql("SET GLOBAL read_only = 1");
    // b1 primary, b2 replica.
    let settled = wait_roles(&lab, [1.0, 0.0, 0.0, 1.0], Duration::from_secs(20));
    for _ in 0..4 {
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.20"),
            "0",
            "writer VIP reached a replica"
        );
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.21"),
            "1",
            "reader VIP reached the primary"
        );
    }
    // Fail over: b2 becomes the primary.
    db1.sql("SET GLOBAL read_only = 1");
    db2.sql("SET GLOBAL read_only = 0");
    let swapped = wait_roles(&lab, [0.0, 1.0, 1.0, 0.0], Duration::from_secs(10));
    for _ in 0..4 {
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.20"),
            "0",
            "writer VIP after the swap"
        );
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.21"),
            "1",
            "reader VIP after the swap"
        );
    }
    eprintln!("{test}: roles settled {settled:?} after start; followed a swap in {swapped:?}");
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("server is read-only (a replica)"), "{log}");
    assert!(log.contains("server is read-write (the primary)"), "{log}");
}
