//! `kappa bridge kafka` and `kappa serve --bridge` against a real broker
//! (Tansu on loopback), killed with SIGKILL at random points, the broker
//! too.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, serve_with};
use kappadb_bridge::consume::read_topic;
use kappadb_bridge::test_broker::{
    Broker, assert_mirrors, shared_or_start, tansu_or_skip, unique_topic,
};
use kappadb_core::Db;
use kappadb_core::test_utils::TestPeer;
use rand::{Rng, SeedableRng};

fn bridge_child(dir: &Path, broker: &str, topic: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kappa"))
        .arg("--dir")
        .arg(dir)
        .args(["bridge", "kafka", "--brokers", broker, "--topic", topic])
        .env_remove("KAPPA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// `kappa status --json`, once it shows the bridge running with nothing
/// left to send. `child` (with its log) is the bridge's process, if it has
/// one of its own: it must not exit meanwhile.
fn wait_caught_up(dir: &Path, mut child: Option<(&mut Child, &Path)>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some((c, log)) = child.as_mut()
            && let Some(status) = c.try_wait().unwrap()
        {
            panic!(
                "the bridge exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let out = common::kappa(dir, &["--json", "status"]);
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let b = &s["bridge"];
            if b["state"] == "running" && b["lag_records"] == 0 && b["in_flight"] == 0 {
                return s;
            }
            assert!(Instant::now() < deadline, "not caught up: {s}");
        } else {
            assert!(
                Instant::now() < deadline,
                "status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_of_the_bridge_and_the_broker_never_duplicates_or_loses_a_record() {
    let Some(bin) = tansu_or_skip("kill_9_of_the_bridge") else {
        return;
    };
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let mut broker = Broker::start(&bin, &tmp.path().join("broker"));
    ok(&dir, &["init"]);
    let mut peers = [TestPeer::new(11), TestPeer::new(12)];
    let log = tmp.path().join("bridge.log");
    for round in 0..8u64 {
        {
            // Between runs the test holds the database: own entries and two
            // other feeds' (as if synced), interleaved.
            let db = Db::open(&dir).unwrap();
            for p in &mut peers {
                let page: Vec<_> = (0..150)
                    .map(|i| p.make(round * 1000 + i, vec![b'p'; 100]))
                    .collect();
                db.ingest(page).unwrap();
                db.append_batch(
                    (0..600)
                        .map(|i| format!("{round}.{i}").into_bytes())
                        .collect(),
                )
                .unwrap();
            }
        }
        let mut child = bridge_child(&dir, &broker.addr(), "crash", &log);
        std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
        if rng.random_bool(0.4) {
            broker.kill();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..700)));
            broker.restart();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..700)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A last run to the end, stopped cleanly.
    let mut child = bridge_child(&dir, &broker.addr(), "crash", &log);
    let status = wait_caught_up(&dir, Some((&mut child, &log)));
    assert_eq!(status["bridge"]["topic"], "crash");
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    let fetched = read_topic(&broker.addr(), "crash", Duration::from_secs(60)).unwrap();
    let db = Db::open(&dir).unwrap();
    assert_eq!(db.status().records, 8 * 2 * (150 + 600));
    assert_mirrors(&db, &fetched);
}

#[test]
fn serve_bridges_and_shows_the_lag_in_status() {
    let Some(bin) = tansu_or_skip("serve_bridges") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let (_own, addr) = shared_or_start(&bin, &tmp.path().join("broker"));
    let topic = unique_topic("served");
    ok(&dir, &["init"]);
    let url = format!("kafka://{addr}/{topic}");
    let node = serve_with(&dir, &["--api", "127.0.0.1:0", "--bridge", &url]);
    for i in 0..50 {
        ok(
            &dir,
            &[
                "append",
                &format!(r#"{{"type":"kv.put","key":"k","value":{i}}}"#),
            ],
        );
    }
    let s = wait_caught_up(&dir, None);
    assert_eq!(s["bridge"]["produced"], 50, "{s}");
    let human = ok(&dir, &["status"]);
    assert!(
        human.contains(&format!("kafka     topic {topic}: running, 0 records")),
        "{human}"
    );
    assert!(node.stop());
    let fetched = read_topic(&addr, &topic, Duration::from_secs(60)).unwrap();
    assert_mirrors(&Db::open(&dir).unwrap(), &fetched);
}

#[test]
fn a_bad_bridge_url_is_a_usage_error_with_the_form() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    ok(&dir, &["init"]);
    let err = common::fails(&dir, &["serve", "--bridge", "kafka:/x"], None);
    assert!(err.contains("kafka://HOST:PORT"), "{err}");
    let err = common::fails(
        &dir,
        &[
            "bridge",
            "kafka",
            "--brokers",
            "127.0.0.1:1",
            "--topic",
            "a/b",
        ],
        None,
    );
    assert!(err.contains("is not a topic name"), "{err}");
}
