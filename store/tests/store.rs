//! The store's contract, tested through its public API and, where the point is what lies in the
//! file, through redb directly.

use carapace_engine::{
    AgentId, AgentSpec, Command, CommandId, Input, Instance, Millis, NodeId, Outcome, Priority,
    RolloutId, RolloutState, SnapshotId, StartReason, StopReason, TenantId, Version, ZoneId,
};
use carapace_store::{
    Batch, DecodeError, DropReason, Dropped, FORMAT_VERSION, JournalEntry, JournalRecord,
    MAX_RECORD_BYTES, RECORD_VERSION, Store, StoreError,
};
use proptest::prelude::*;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

// The file layout, as a reader of an old store sees it. Changing these breaks existing stores.
const STORE_INFO: TableDefinition<&str, &[u8]> = TableDefinition::new("store_info");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("carapace-store-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the daemon keeps under kind "agent": the spec plus how to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DesiredAgent {
    spec: AgentSpec,
    image: String,
}

fn spec(id: u32) -> AgentSpec {
    AgentSpec {
        id: AgentId(id),
        tenant: TenantId(id % 7),
        class: 1,
        priority: Priority(3),
        memory_bytes_limit: 2 << 30,
        memory_bytes_request: 1 << 30,
        version: Version::new(4, 1),
        depends_on: Vec::new(),
        allowed_zones: vec![ZoneId(0)],
    }
}

fn desired_agent(id: u32) -> DesiredAgent {
    DesiredAgent {
        spec: spec(id),
        image: format!("openclaw@{id}"),
    }
}

fn input(at: u64, input: Input) -> JournalRecord {
    JournalRecord::new(Millis(at), JournalEntry::Input(input))
}

fn command(at: u64, command: Command) -> JournalRecord {
    JournalRecord::new(Millis(at), JournalEntry::Command(command))
}

fn start(id: u64, agent: u32) -> Command {
    Command::Start {
        id: CommandId(id),
        agent: AgentId(agent),
        instance: Instance(1),
        node: NodeId(0),
        version: Version::new(4, 1),
        snapshot: None,
        reason: StartReason::Provision,
        warm: true,
    }
}

fn read_all(store: &Store) -> Vec<(u64, JournalRecord)> {
    let read = store.read_journal(1, usize::MAX).unwrap();
    assert_eq!(read.dropped, None);
    read.records
}

#[test]
fn batches_round_trip_across_reopen() {
    let dir = TempDir::new("round-trip");
    let path = dir.file("store.redb");
    let mut store = Store::open(&path, 1_700_000_000_000).unwrap();
    assert_eq!(store.epoch_unix_ms(), 1_700_000_000_000);
    assert_eq!((store.last_seq(), store.journal_len().unwrap()), (0, 0));

    let mut expected = Vec::new();
    let mut first = Batch::new();
    for id in 1..=3 {
        let record = input(u64::from(id), Input::CreateAgent(spec(id)));
        first
            .put_desired("agent", u64::from(id), &desired_agent(id))
            .append(&record);
        expected.push(record);
    }
    first.put_meta("engine_time", &3u64.to_le_bytes());
    assert_eq!(store.commit(first).unwrap().seqs, 1..4);

    let mut second = Batch::new();
    let records = [
        command(3, start(1, 1)),
        input(
            10,
            Input::FinishCommand {
                command: CommandId(1),
                outcome: Outcome::Succeeded,
            },
        ),
        JournalRecord::new(Millis(15), JournalEntry::Timeout),
        input(20, Input::RemoveAgent { agent: AgentId(2) }),
    ];
    for record in &records {
        second.append(record);
    }
    expected.extend(records);
    second
        .remove_desired("agent", 2)
        .put_desired("agent", 3, &desired_agent(33))
        .put_desired("node", 1, &"node-1")
        .put_meta("engine_time", &20u64.to_le_bytes());
    assert_eq!(store.commit(second).unwrap().seqs, 4..8);
    // An empty batch assigns nothing and does not disturb the numbering.
    assert_eq!(store.commit(Batch::new()).unwrap().seqs, 8..8);
    store.close().unwrap();

    // A different epoch on reopen is ignored: the store keeps the one it was created with.
    let store = Store::open(&path, 42).unwrap();
    assert_eq!(store.epoch_unix_ms(), 1_700_000_000_000);
    assert_eq!((store.last_seq(), store.journal_len().unwrap()), (7, 7));
    let records = read_all(&store);
    let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    let read: Vec<JournalRecord> = records.into_iter().map(|(_, record)| record).collect();
    assert_eq!(read, expected);

    let agents: Vec<(u64, DesiredAgent)> = store.desired("agent").unwrap();
    assert_eq!(agents, vec![(1, desired_agent(1)), (3, desired_agent(33))]);
    assert_eq!(
        store.desired::<String>("node").unwrap(),
        vec![(1, "node-1".to_owned())]
    );
    assert_eq!(store.desired::<String>("rollout").unwrap(), Vec::new());
    assert_eq!(store.desired_one::<DesiredAgent>("agent", 2).unwrap(), None);
    assert_eq!(
        store.desired_one::<DesiredAgent>("agent", 1).unwrap(),
        Some(desired_agent(1))
    );
    assert_eq!(
        store.meta("engine_time").unwrap(),
        Some(20u64.to_le_bytes().to_vec())
    );
    assert_eq!(store.meta("absent").unwrap(), None);

    // Paging: limits and starting points.
    let page = store.read_journal(3, 2).unwrap();
    assert_eq!(
        page.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(page.dropped, None);
    assert!(store.read_journal(8, 10).unwrap().records.is_empty());
    assert!(store.read_journal(1, 0).unwrap().records.is_empty());
}

#[test]
fn desired_ids_are_read_in_numeric_order_per_kind() {
    let dir = TempDir::new("order");
    let mut store = Store::open(&dir.file("store.redb"), 0).unwrap();
    let mut batch = Batch::new();
    for id in [300u64, 2, u64::MAX, 0, 10] {
        batch.put_desired("agent", id, &id);
    }
    batch
        .put_desired("agen", 5, &5u64)
        .put_desired("agents", 1, &1u64);
    store.commit(batch).unwrap();
    let ids: Vec<u64> = store
        .desired::<u64>("agent")
        .unwrap()
        .into_iter()
        .map(|(id, value)| {
            assert_eq!(id, value);
            id
        })
        .collect();
    assert_eq!(ids, vec![0, 2, 10, 300, u64::MAX]);
}

#[test]
fn a_failed_batch_changes_nothing() {
    let dir = TempDir::new("atomic");
    let path = dir.file("store.redb");
    let mut store = Store::open(&path, 0).unwrap();
    let mut batch = Batch::new();
    batch
        .put_desired("agent", 1, &desired_agent(1))
        .append(&input(1, Input::CreateAgent(spec(1))))
        .put_meta("engine_time", &1u64.to_le_bytes());
    store.commit(batch).unwrap();

    // Valid changes first, then a record over the limit: the whole batch must be refused.
    let mut huge = spec(2);
    huge.depends_on = (0..MAX_RECORD_BYTES as u32 / 4).map(AgentId).collect();
    let mut batch = Batch::new();
    batch
        .put_desired("agent", 2, &desired_agent(2))
        .remove_desired("agent", 1)
        .put_meta("engine_time", &2u64.to_le_bytes())
        .append(&input(
            2,
            Input::AgentStarted {
                agent: AgentId(1),
                instance: Instance(1),
            },
        ))
        .append(&input(2, Input::CreateAgent(huge)));
    let error = store.commit(batch).unwrap_err();
    assert!(
        matches!(error, StoreError::TooLarge { limit, .. } if limit == MAX_RECORD_BYTES),
        "{error:?}"
    );

    let unchanged = |store: &Store| {
        assert_eq!((store.last_seq(), store.journal_len().unwrap()), (1, 1));
        assert_eq!(
            store.desired::<DesiredAgent>("agent").unwrap(),
            vec![(1, desired_agent(1))]
        );
        assert_eq!(
            store.meta("engine_time").unwrap(),
            Some(1u64.to_le_bytes().to_vec())
        );
        assert_eq!(
            read_all(store),
            vec![(1, input(1, Input::CreateAgent(spec(1))))]
        );
    };
    unchanged(&store);
    store.close().unwrap();
    let mut store = Store::open(&path, 0).unwrap();
    unchanged(&store);

    // The refused batch took no sequence numbers.
    let mut batch = Batch::new();
    batch.append(&JournalRecord::new(Millis(3), JournalEntry::Timeout));
    assert_eq!(store.commit(batch).unwrap().seqs, 2..3);
}

#[test]
fn bad_keys_are_refused() {
    let dir = TempDir::new("keys");
    let mut store = Store::open(&dir.file("store.redb"), 0).unwrap();
    let mut batch = Batch::new();
    batch.put_meta("", b"x");
    assert!(matches!(
        store.commit(batch),
        Err(StoreError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.desired::<u64>(&"k".repeat(1000)),
        Err(StoreError::InvalidKey { .. })
    ));
}

#[test]
fn a_desired_record_of_the_wrong_type_is_an_error_not_a_gap() {
    let dir = TempDir::new("desired-type");
    let path = dir.file("store.redb");
    let mut store = Store::open(&path, 0).unwrap();
    let mut batch = Batch::new();
    batch
        .put_desired("agent", 1, &desired_agent(1))
        .put_desired("agent", 2, &"not an agent");
    store.commit(batch).unwrap();
    let error = store.desired::<DesiredAgent>("agent").unwrap_err();
    assert!(
        matches!(error, StoreError::DecodeDesired { id: 2, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&path.display().to_string()));
}

/// Commits `records` and closes the store, then writes `extra` straight into the journal
/// table, as a damaged file or a newer release would leave it.
fn store_with_raw_records(path: &Path, records: &[JournalRecord], extra: &[(u64, &[u8])]) {
    let mut store = Store::open(path, 0).unwrap();
    let mut batch = Batch::new();
    for record in records {
        batch.append(record);
    }
    store.commit(batch).unwrap();
    store.close().unwrap();

    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut journal = txn.open_table(JOURNAL).unwrap();
        for (seq, bytes) in extra {
            journal.insert(*seq, *bytes).unwrap();
        }
    }
    txn.commit().unwrap();
    db.close().unwrap();
}

fn timeouts(n: u64) -> Vec<JournalRecord> {
    (1..=n)
        .map(|at| JournalRecord::new(Millis(at), JournalEntry::Timeout))
        .collect()
}

#[test]
fn a_corrupt_record_ends_the_read_at_the_last_valid_one() {
    let dir = TempDir::new("corrupt");
    let path = dir.file("store.redb");
    let valid = JournalRecord::new(Millis(7), JournalEntry::Timeout)
        .encode()
        .unwrap();
    store_with_raw_records(
        &path,
        &timeouts(5),
        &[(6, b"\x00\xffnot json at all"), (7, &valid)],
    );

    let store = Store::open(&path, 0).unwrap();
    assert_eq!(store.last_seq(), 7);
    let read = store.read_journal(1, 100).unwrap();
    assert_eq!(read.records.len(), 5);
    assert_eq!(read.records.last().unwrap().0, 5);
    let dropped = read.dropped.unwrap();
    assert_eq!(dropped.seq, 6);
    assert!(
        matches!(
            dropped.reason,
            DropReason::Undecodable(DecodeError::Malformed { .. })
        ),
        "{dropped:?}"
    );
    // A reader that chooses to look past it can.
    let after = store.read_journal(7, 100).unwrap();
    assert_eq!(
        after.records,
        vec![(7, JournalRecord::new(Millis(7), JournalEntry::Timeout))]
    );
}

#[test]
fn an_unreadable_tail_set_aside_lets_new_records_follow_the_valid_prefix() {
    let dir = TempDir::new("set-aside");
    let path = dir.file("store.redb");
    let valid = JournalRecord::new(Millis(7), JournalEntry::Timeout)
        .encode()
        .unwrap();
    store_with_raw_records(&path, &timeouts(5), &[(6, b"\x00garbage"), (7, &valid)]);

    let mut store = Store::open(&path, 0).unwrap();
    let dropped = store.read_journal(1, 100).unwrap().dropped.unwrap();
    assert_eq!(store.set_aside_journal_from(dropped.seq).unwrap(), 2);
    assert_eq!(store.last_seq(), 5);
    assert_eq!(store.set_aside_len().unwrap(), 2, "kept, not destroyed");
    let mut batch = Batch::new();
    batch.append(&JournalRecord::new(Millis(8), JournalEntry::Timeout));
    assert_eq!(store.commit(batch).unwrap().seqs, 6..7);
    store.close().unwrap();

    let store = Store::open(&path, 0).unwrap();
    let read = store.read_journal(1, 100).unwrap();
    assert_eq!(read.dropped, None, "the journal reads through again");
    assert_eq!(read.records.len(), 6);
    assert_eq!(read.records[5].1.at, Millis(8));
    // Nothing to cut is no change.
    let mut store = store;
    assert_eq!(store.set_aside_journal_from(100).unwrap(), 0);
    assert_eq!(store.last_seq(), 6);
}

#[test]
fn a_newer_releases_record_is_reported_not_misread() {
    let dir = TempDir::new("newer-record");
    let path = dir.file("store.redb");
    store_with_raw_records(
        &path,
        &timeouts(2),
        &[(
            3,
            br#"{"v":2,"at":3,"entry":{"input":{"kind":"telepathy"}}}"#,
        )],
    );
    let read = Store::open(&path, 0).unwrap().read_journal(1, 100).unwrap();
    assert_eq!(read.records.len(), 2);
    assert_eq!(
        read.dropped,
        Some(Dropped {
            seq: 3,
            reason: DropReason::Undecodable(DecodeError::NewerVersion {
                found: 2,
                supported: RECORD_VERSION
            }),
        })
    );
}

#[test]
fn a_gap_in_the_journal_ends_the_read() {
    let dir = TempDir::new("gap");
    let path = dir.file("store.redb");
    let valid = JournalRecord::new(Millis(9), JournalEntry::Timeout)
        .encode()
        .unwrap();
    store_with_raw_records(&path, &timeouts(3), &[(5, &valid)]);
    let read = Store::open(&path, 0).unwrap().read_journal(1, 100).unwrap();
    assert_eq!(read.records.len(), 3);
    assert_eq!(
        read.dropped,
        Some(Dropped {
            seq: 4,
            reason: DropReason::Missing
        })
    );
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = TempDir::new("not-db");
    let path = dir.file("notes.txt");
    let text = "these are an operator's notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let error = Store::open(&path, 0).unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    // And the file is left as it was.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn a_truncated_store_is_a_clear_error() {
    let dir = TempDir::new("truncated");
    let path = dir.file("store.redb");
    let mut store = Store::open(&path, 0).unwrap();
    let mut batch = Batch::new();
    for id in 0..2000 {
        batch.append(&input(u64::from(id), Input::CreateAgent(spec(id))));
    }
    store.commit(batch).unwrap();
    store.close().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut inside the header, inside the first pages, halfway, and by one page at the end.
    for keep in [3, 100, len / 2, len - 4096] {
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.file(&format!("cut-{keep}.redb"));
        std::fs::write(&cut, &bytes[..keep as usize]).unwrap();
        let error = Store::open(&cut, 0).unwrap_err();
        assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&cut.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = TempDir::new("newer-format");
    let path = dir.file("store.redb");
    Store::open(&path, 0).unwrap().close().unwrap();
    let db = Database::open(&path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut info = txn.open_table(STORE_INFO).unwrap();
        let stored = info
            .get("format_version")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(
            stored,
            FORMAT_VERSION.to_le_bytes(),
            "the layout this test assumes"
        );
        info.insert("format_version", 2u32.to_le_bytes().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    db.close().unwrap();

    let error = Store::open(&path, 0).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NewerFormat {
                found: 2,
                supported: FORMAT_VERSION,
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("newer"), "{text}");
}

#[test]
fn some_other_redb_database_is_not_a_store() {
    let dir = TempDir::new("foreign");
    let path = dir.file("other.redb");
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(TableDefinition::<&str, u64>::new("users"))
        .unwrap()
        .insert("ada", 1)
        .unwrap();
    txn.commit().unwrap();
    db.close().unwrap();
    let error = Store::open(&path, 0).unwrap_err();
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    assert!(error.to_string().contains(&path.display().to_string()));
}

#[test]
fn a_store_has_one_writer() {
    let dir = TempDir::new("one-writer");
    let path = dir.file("store.redb");
    let _store = Store::open(&path, 0).unwrap();
    let error = Store::open(&path, 0).unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
}

#[test]
fn store_errors_can_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<StoreError>();
    send_sync::<Store>();
}

/// Records as `carapace` v1 wrote them. These must keep decoding to exactly these values for as
/// long as v1 journals exist: a change to the engine's serde types that breaks one of them
/// breaks every production journal.
#[test]
fn v1_records_stay_readable() {
    let cases = [
        (
            r#"{"v":1,"at":86400000,"entry":{"input":{"kind":"create_agent","id":7,"tenant":3,"class":2,"priority":5,"memory_bytes_limit":2147483648,"memory_bytes_request":1073741824,"version":{"runtime":4,"config":1},"depends_on":[1,2],"allowed_zones":[0]}}}"#,
            input(
                86_400_000,
                Input::CreateAgent(AgentSpec {
                    id: AgentId(7),
                    tenant: TenantId(3),
                    class: 2,
                    priority: Priority(5),
                    memory_bytes_limit: 2 << 30,
                    memory_bytes_request: 1 << 30,
                    version: Version::new(4, 1),
                    depends_on: vec![AgentId(1), AgentId(2)],
                    allowed_zones: vec![ZoneId(0)],
                }),
            ),
        ),
        (
            r#"{"v":1,"at":1500,"entry":{"input":{"kind":"agent_exited","agent":7,"instance":2,"code":137,"oom_killed":true}}}"#,
            input(
                1500,
                Input::AgentExited {
                    agent: AgentId(7),
                    instance: Instance(2),
                    code: 137,
                    oom_killed: true,
                },
            ),
        ),
        (
            r#"{"v":1,"at":1501,"entry":"timeout"}"#,
            JournalRecord::new(Millis(1501), JournalEntry::Timeout),
        ),
        (
            r#"{"v":1,"at":1502,"entry":{"command":{"kind":"start","id":12,"agent":7,"instance":3,"node":4,"version":{"runtime":4,"config":1},"snapshot":9,"reason":"recreate","warm":false}}}"#,
            command(
                1502,
                Command::Start {
                    id: CommandId(12),
                    agent: AgentId(7),
                    instance: Instance(3),
                    node: NodeId(4),
                    version: Version::new(4, 1),
                    snapshot: Some(SnapshotId(9)),
                    reason: StartReason::Recreate,
                    warm: false,
                },
            ),
        ),
        (
            r#"{"v":1,"at":1503,"entry":{"command":{"kind":"report_rollout","rollout":1,"state":{"state":"rolled_back","failed_agent":7}}}}"#,
            command(
                1503,
                Command::ReportRollout {
                    rollout: RolloutId(1),
                    state: RolloutState::RolledBack {
                        failed_agent: AgentId(7),
                    },
                },
            ),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            JournalRecord::decode(text.as_bytes()),
            Ok(expected),
            "{text}"
        );
    }
}

// ---- Crash safety: a real kill -9 in the middle of writing. ----

/// Set in the child process: the store file its writer loop appends to.
const CRASH_CHILD_ENV: &str = "CARAPACE_STORE_CRASH_CHILD";
const RECORDS_PER_BATCH: u64 = 3;
/// The child stops by itself after this many records, should its parent never kill it.
const CHILD_RECORD_CAP: u64 = 200_000;

/// The record the writer journals under `seq`: varied kinds and sizes, and recognisably its own.
fn crash_record(seq: u64) -> JournalRecord {
    let agent = AgentId((seq % 1000) as u32);
    match seq % 3 {
        0 => JournalRecord::new(Millis(seq), JournalEntry::Timeout),
        1 => {
            let mut spec = spec(agent.0);
            spec.memory_bytes_request = seq;
            spec.depends_on = (0..(seq % 300) as u32).map(AgentId).collect();
            input(seq, Input::CreateAgent(spec))
        }
        _ => command(
            seq,
            Command::Throttle {
                agent,
                instance: Instance(1),
                node: NodeId(2),
                memory_bytes_high: seq,
            },
        ),
    }
}

/// Not a test of its own: the writer half of `a_kill_9_mid_write_loses_no_committed_record`,
/// run when this binary is re-executed with `CRASH_CHILD_ENV` set. It commits numbered batches
/// (records, a desired-state put and a metadata put) and reports each committed seq on stdout.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let mut store = Store::open(Path::new(&path), 0).unwrap();
    let mut out = std::io::stdout().lock();
    while store.last_seq() < CHILD_RECORD_CAP {
        let first = store.last_seq() + 1;
        let last = first + RECORDS_PER_BATCH - 1;
        let mut batch = Batch::new();
        for seq in first..=last {
            batch.append(&crash_record(seq));
        }
        batch
            .put_desired("batch", last, &last)
            .put_meta("last_seq", &last.to_le_bytes());
        let info = store.commit(batch).unwrap();
        assert_eq!(info.seqs, first..last + 1);
        // A closed pipe means the parent is gone: stop.
        if writeln!(out, "committed {last}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Runs the writer in a child process, kills it with SIGKILL once it has reported `kill_after`
/// commits, and returns the highest seq it reported committed.
fn run_and_kill_writer(path: &Path, kill_after: usize) -> u64 {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open until the child is dead: closing it first would let the writer see a broken
    // pipe and stop cleanly instead of being killed mid-write.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = Vec::new();
    while reported.len() < kill_after {
        let Some(line) = lines.next() else { break };
        // libtest prints its own lines too.
        if let Some(seq) = line.unwrap().strip_prefix("committed ") {
            reported.push(seq.parse::<u64>().unwrap());
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    // The writer commits back to back, so it is almost surely inside a transaction now.
    let killed = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().unwrap();
    drop(lines);
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        reported.len() >= kill_after,
        "the writer ended early ({status}): {stderr}"
    );
    killed.unwrap();
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "the writer was killed, not finished: {status}"
    );
    *reported.last().unwrap()
}

#[test]
fn a_kill_9_mid_write_loses_no_committed_record() {
    let dir = TempDir::new("kill9");
    let path = dir.file("store.redb");
    let mut previous = 0;
    // Several rounds: each recovers the file the last one was killed writing, and appends on.
    for kill_after in [5, 40, 1, 17, 60, 8, 33] {
        let reported = run_and_kill_writer(&path, kill_after);
        assert!(reported > previous);

        let store = Store::open(&path, 0).unwrap();
        let last = store.last_seq();
        assert!(
            last >= reported,
            "committed {reported} but recovered only {last}"
        );
        assert_eq!(store.journal_len().unwrap(), last, "dense from 1");
        assert_eq!(last % RECORDS_PER_BATCH, 0, "whole batches only");
        let read = store.read_journal(1, usize::MAX).unwrap();
        assert_eq!(read.dropped, None, "no torn record");
        assert_eq!(read.records.len() as u64, last);
        for (i, (seq, record)) in read.records.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(*record, crash_record(*seq));
        }
        // The other tables committed with exactly the same batches.
        assert_eq!(
            store.meta("last_seq").unwrap(),
            Some(last.to_le_bytes().to_vec())
        );
        let batches: Vec<u64> = store
            .desired::<u64>("batch")
            .unwrap()
            .into_iter()
            .map(|(id, value)| {
                assert_eq!(id, value);
                id
            })
            .collect();
        let expected: Vec<u64> = (1..=last / RECORDS_PER_BATCH)
            .map(|n| n * RECORDS_PER_BATCH)
            .collect();
        assert_eq!(batches, expected);
        store.close().unwrap();
        previous = last;
    }
}

// ---- Properties of the record codec. ----

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u32>(), 0..8)
        )
            .prop_map(|(id, tenant, limit, deps)| {
                let mut spec = spec(id);
                spec.tenant = TenantId(tenant);
                spec.memory_bytes_limit = limit;
                spec.depends_on = deps.into_iter().map(AgentId).collect();
                Input::CreateAgent(spec)
            }),
        (any::<u32>(), any::<u32>(), any::<i32>(), any::<bool>()).prop_map(
            |(agent, instance, code, oom_killed)| Input::AgentExited {
                agent: AgentId(agent),
                instance: Instance(instance),
                code,
                oom_killed,
            }
        ),
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(agent, instance, bytes)| {
            Input::SampleMemory {
                agent: AgentId(agent),
                instance: Instance(instance),
                memory_bytes: bytes,
            }
        }),
        (
            any::<u64>(),
            prop_oneof![
                Just(Outcome::Succeeded),
                Just(Outcome::Failed),
                Just(Outcome::SnapshotFailed)
            ]
        )
            .prop_map(|(id, outcome)| Input::FinishCommand {
                command: CommandId(id),
                outcome,
            }),
        any::<u32>().prop_map(|node| Input::LoseNode { node: NodeId(node) }),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            any::<Option<u32>>(),
            any::<bool>()
        )
            .prop_map(|(id, agent, snapshot, warm)| Command::Start {
                id: CommandId(id),
                agent: AgentId(agent),
                instance: Instance(1),
                node: NodeId(0),
                version: Version::new(4, 1),
                snapshot: snapshot.map(SnapshotId),
                reason: StartReason::Rollout,
                warm,
            }),
        (any::<u64>(), any::<u32>(), any::<Option<u32>>()).prop_map(|(id, agent, snapshot)| {
            Command::Stop {
                id: CommandId(id),
                agent: AgentId(agent),
                instance: Instance(2),
                node: NodeId(1),
                snapshot: snapshot.map(SnapshotId),
                reason: StopReason::Evict,
            }
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(agent, high)| Command::Throttle {
            agent: AgentId(agent),
            instance: Instance(1),
            node: NodeId(0),
            memory_bytes_high: high,
        }),
        ".{0,64}".prop_map(|reason| Command::Reject { reason }),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(rollout, wave, agents)| {
            Command::ReportRollout {
                rollout: RolloutId(rollout),
                state: RolloutState::WaveStarted { wave, agents },
            }
        }),
    ]
}

fn arb_record() -> impl Strategy<Value = JournalRecord> {
    let entry = prop_oneof![
        arb_input().prop_map(JournalEntry::Input),
        Just(JournalEntry::Timeout),
        arb_command().prop_map(JournalEntry::Command),
    ];
    (any::<u64>(), entry).prop_map(|(at, entry)| JournalRecord::new(Millis(at), entry))
}

proptest! {
    #[test]
    fn records_round_trip(record in arb_record()) {
        let bytes = record.encode().unwrap();
        prop_assert_eq!(JournalRecord::decode(&bytes), Ok(record));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = JournalRecord::decode(&bytes);
    }

    #[test]
    fn damaged_records_never_panic_the_decoder(
        record in arb_record(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = record.encode().unwrap();
        let _ = JournalRecord::decode(&bytes[..cut.index(bytes.len() + 1)]);
        let mut flipped = bytes.clone();
        flipped[flip.index(bytes.len())] = byte;
        let _ = JournalRecord::decode(&flipped);
    }
}
