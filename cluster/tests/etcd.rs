//! The client against a real 3-member etcd cluster on loopback (Debian's etcd-server, as the
//! test command installs it). Each test has its own cluster and ports; every wait has a
//! deadline.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use carapace_cluster::etcd::{Txn, WatchEvent};
use carapace_cluster::local::LocalEtcd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(30);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("carapace-etcd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cluster(name: &str, base_port: u16) -> LocalEtcd {
    LocalEtcd::start(&scratch(name), 3, base_port, STARTUP).unwrap()
}

#[test]
fn keys_are_put_listed_and_deleted_across_members() {
    let etcd = cluster("kv", 12000);
    let client = etcd.client(Duration::from_secs(2));
    let first = client.put("/t/a/1", b"one", None).unwrap();
    let second = client.put("/t/a/2", b"two", None).unwrap();
    client.put("/t/b", b"other", None).unwrap();
    assert!(second > first);
    let (listed, revision) = client.list("/t/a/").unwrap();
    let keys: Vec<&str> = listed.iter().map(|kv| kv.key_str()).collect();
    assert_eq!(keys, ["/t/a/1", "/t/a/2"]);
    assert!(revision > second);
    assert_eq!(client.get("/t/a/2").unwrap().unwrap().value, b"two");
    assert_eq!(client.delete("/t/a/1").unwrap(), 1);
    assert_eq!(client.delete("/t/a/1").unwrap(), 0);
    assert!(client.get("/t/a/1").unwrap().is_none());
}

#[test]
fn a_transaction_applies_only_while_its_comparisons_hold() {
    let etcd = cluster("txn", 12200);
    let client = etcd.client(Duration::from_secs(2));
    let created = client.put("/t/fence", b"x", None).unwrap();
    let held = client
        .txn(
            Txn::new()
                .when_created_at(b"/t/fence", created)
                .put(b"/t/w", b"1", None),
        )
        .unwrap();
    assert!(held.succeeded);
    let stale = client
        .txn(
            Txn::new()
                .when_created_at(b"/t/fence", created - 1)
                .put(b"/t/w", b"2", None),
        )
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(client.get("/t/w").unwrap().unwrap().value, b"1");
    let absent = client
        .txn(Txn::new().when_absent(b"/t/new").put(b"/t/new", b"n", None))
        .unwrap();
    assert!(absent.succeeded);
    let again = client
        .txn(Txn::new().when_absent(b"/t/new").put(b"/t/new", b"m", None))
        .unwrap();
    assert!(!again.succeeded);
}

#[test]
fn a_key_under_a_lease_goes_when_the_lease_is_not_renewed() {
    let etcd = cluster("lease", 12400);
    let client = etcd.client(Duration::from_secs(2));
    let (lease, ttl) = client.grant(Duration::from_secs(2)).unwrap();
    assert_eq!(ttl, Duration::from_secs(2));
    client.put("/t/leased", b"v", Some(lease)).unwrap();
    assert_eq!(client.get("/t/leased").unwrap().unwrap().lease, Some(lease));
    // Renewed past its TTL, the key stays.
    let renewed_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < renewed_until {
        assert!(client.keep_alive(lease).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(client.get("/t/leased").unwrap().is_some());
    // Left alone, it goes within the TTL (etcd checks expiry every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get("/t/leased").unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the leased key outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.keep_alive(lease).unwrap(), None);
}

#[test]
fn a_watch_sees_every_change_in_order_and_resumes_where_it_stopped() {
    let etcd = cluster("watch", 12600);
    let client = etcd.client(Duration::from_secs(2));
    let (_, revision) = client.list("/t/w/").unwrap();
    let mut watch = client.watch("/t/w/", revision + 1).unwrap();
    client.put("/t/w/a", b"1", None).unwrap();
    client.put("/t/elsewhere", b"x", None).unwrap();
    client.put("/t/w/b", b"2", None).unwrap();
    client.delete("/t/w/a").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        for event in watch.next_batch().unwrap().events {
            seen.push(match event {
                WatchEvent::Put(kv) => format!("put {}", kv.key_str()),
                WatchEvent::Delete(kv) => format!("delete {}", kv.key_str()),
            });
        }
    }
    assert_eq!(seen, ["put /t/w/a", "put /t/w/b", "delete /t/w/a"]);
    // A new watch from where this one stopped sees only what came after.
    let resume = watch.resume_from();
    drop(watch);
    client.put("/t/w/c", b"3", None).unwrap();
    let mut again = client.watch("/t/w/", resume).unwrap();
    let batch = again.next_batch().unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].key_value().key_str(), "/t/w/c");
}

#[test]
fn one_campaign_leads_and_a_deposed_leaders_fenced_write_is_refused() {
    let etcd = cluster("election", 12800);
    let client = etcd.client(Duration::from_secs(2));
    let (first_lease, _) = client.grant(Duration::from_secs(30)).unwrap();
    let first = client
        .campaign("/t/election", b"first", first_lease)
        .unwrap();
    assert_eq!(
        client.leader("/t/election").unwrap().unwrap().value,
        b"first"
    );

    // A second candidate waits while the first leads.
    let endpoints = etcd.endpoints();
    let (tx, rx) = std::sync::mpsc::channel();
    let second = std::thread::spawn(move || {
        let client = carapace_cluster::Client::new(&endpoints, Duration::from_secs(2)).unwrap();
        let (lease, _) = client.grant(Duration::from_secs(30)).unwrap();
        tx.send(()).unwrap();
        client.campaign("/t/election", b"second", lease).unwrap()
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        client
            .txn(Txn::new().when_created_at(&first.key, first.revision).put(
                b"/t/by-leader",
                b"1",
                None
            ))
            .unwrap()
            .succeeded
    );

    // The first leader loses its lease (as when its machine is cut off): the second leads,
    // and the first's late write is refused by etcd.
    client.revoke(first_lease).unwrap();
    let second = second.join().unwrap();
    assert_ne!(second.key, first.key);
    assert_eq!(
        client.leader("/t/election").unwrap().unwrap().value,
        b"second"
    );
    let late = client
        .txn(Txn::new().when_created_at(&first.key, first.revision).put(
            b"/t/by-leader",
            b"2",
            None,
        ))
        .unwrap();
    assert!(!late.succeeded);
    assert_eq!(client.get("/t/by-leader").unwrap().unwrap().value, b"1");
    client.resign(&second).unwrap();
    assert!(client.leader("/t/election").unwrap().is_none());
}

#[test]
fn the_client_carries_on_through_one_member_down_and_stops_without_a_quorum() {
    let mut etcd = cluster("members", 13000);
    let client = etcd.client(Duration::from_secs(1));
    client.put("/t/k", b"before", None).unwrap();
    // The member the client prefers goes first.
    etcd.kill(0);
    client.put("/t/k", b"one down", None).unwrap();
    assert_eq!(client.get("/t/k").unwrap().unwrap().value, b"one down");
    // Two down: no quorum, so no write commits; the error names no value.
    etcd.kill(1);
    let error = client.put("/t/k", b"secret-value", None).unwrap_err();
    assert!(!error.to_string().contains("secret-value"), "{error}");
    // The survivor answers, and knows of no leader: the cluster has no quorum.
    let deadline = Instant::now() + STARTUP;
    while !client.members().leaderless() {
        assert!(Instant::now() < deadline, "{:?}", client.members());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.members().reachable, 1);
    // Back: writes commit again.
    etcd.restart(0).unwrap();
    etcd.restart(1).unwrap();
    etcd.wait_for_quorum(STARTUP).unwrap();
    client.put("/t/k", b"after", None).unwrap();
    // Every member answers again and, once caught up, follows the leader.
    let deadline = Instant::now() + STARTUP;
    loop {
        let view = client.members();
        if (view.reachable, view.with_leader) == (3, 3) {
            break;
        }
        assert!(Instant::now() < deadline, "{view:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(client.get("/t/k").unwrap().unwrap().value, b"after");
}

#[test]
fn the_leaders_journal_reads_back_whole_and_a_deposed_leader_cannot_append() {
    use carapace_cluster::journal::{EtcdJournal, JournalError};
    use carapace_engine::{Input, Millis, NodeId};
    use carapace_store::{Batch, JournalEntry, JournalRecord};
    use std::sync::Arc;

    let etcd = cluster("journal", 13110);
    let client = Arc::new(etcd.client(Duration::from_secs(2)));
    let (lease, _) = client.grant(Duration::from_secs(30)).unwrap();
    let first = client.campaign("/j/election", b"first", lease).unwrap();
    let mut journal = EtcdJournal::open(client.clone(), "/j/", first.clone(), 1_000).unwrap();
    assert_eq!((journal.epoch_unix_ms(), journal.last_seq()), (1_000, 0));
    // More commits than one page of keys, and more desired records than one page, so that
    // both reads page.
    for step in 0..150u64 {
        let mut batch = Batch::new();
        for n in 0..(1 + step % 3) {
            let input = Input::HeartbeatNode {
                node: NodeId((step * 10 + n) as u32),
            };
            batch.append(&JournalRecord::new(
                Millis(step),
                JournalEntry::Input(input),
            ));
        }
        batch.put_desired("agent", step, &format!("agent {step}"));
        journal.commit(batch).unwrap();
    }
    let expected: u64 = (0..150u64).map(|step| 1 + step % 3).sum();
    assert_eq!(journal.last_seq(), expected);
    let desired = journal.desired_raw("agent").unwrap();
    assert_eq!(desired.len(), 150);
    assert_eq!(desired[149], (149, br#""agent 149""#.to_vec()));

    // Reopened, as a new leader would: the same epoch and the same records, in order.
    let reopened = EtcdJournal::open(client.clone(), "/j/", first.clone(), 99).unwrap();
    assert_eq!(
        (reopened.epoch_unix_ms(), reopened.last_seq()),
        (1_000, expected)
    );
    let mut next = 1;
    let mut seen = 0;
    loop {
        let page = reopened.read_journal(next, 100).unwrap();
        assert!(page.dropped.is_none());
        if page.records.is_empty() {
            break;
        }
        for (seq, _) in &page.records {
            assert_eq!(*seq, next);
            next += 1;
            seen += 1;
        }
    }
    assert_eq!(seen, expected);

    // Another campaign leads once the first resigns; the first's late write is refused and
    // leaves nothing behind.
    client.resign(&first).unwrap();
    let (lease, _) = client.grant(Duration::from_secs(30)).unwrap();
    let second = client.campaign("/j/election", b"second", lease).unwrap();
    let mut late = Batch::new();
    late.append(&JournalRecord::new(Millis(999), JournalEntry::Timeout));
    late.put_desired("agent", 7, &"overwritten");
    let refused = journal.commit(late).unwrap_err();
    assert!(matches!(refused, JournalError::Deposed { .. }), "{refused}");
    let mut new_leader = EtcdJournal::open(client.clone(), "/j/", second, 5).unwrap();
    assert_eq!(new_leader.last_seq(), expected);
    assert_eq!(
        new_leader.desired_raw("agent").unwrap()[7].1,
        br#""agent 7""#.to_vec()
    );
    let mut batch = Batch::new();
    batch.append(&JournalRecord::new(Millis(151), JournalEntry::Timeout));
    assert_eq!(
        new_leader.commit(batch).unwrap().seqs,
        expected + 1..expected + 2
    );
}
