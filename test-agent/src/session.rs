//! The agent's session: the state a real gateway keeps across restarts, reduced to a turn
//! counter in `DIR/session.json`. It is what a recreation from a snapshot must carry over.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const SESSION_FILE: &str = "session.json";
/// Present in a state directory, it makes the agent crash on resume (see `main.rs`).
const POISON_FILE: &str = "poison";

#[derive(Debug, Serialize, Deserialize)]
struct SessionFile {
    turns: u64,
}

#[derive(Debug)]
pub struct Session {
    file: PathBuf,
    turns: u64,
}

impl Session {
    /// Loads the session from `dir`, starting a fresh one (saved at once) if there is none.
    pub fn open(dir: &Path) -> Result<Session, String> {
        let file = dir.join(SESSION_FILE);
        let shown = file.display();
        match fs::read(&file) {
            Ok(bytes) => {
                let saved: SessionFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("cannot load the session from {shown}: {e}"))?;
                Ok(Session {
                    file,
                    turns: saved.turns,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)
                    .and_then(|()| save(&file, 0))
                    .map_err(|e| format!("cannot create the session {shown}: {e}"))?;
                Ok(Session { file, turns: 0 })
            }
            Err(e) => Err(format!("cannot read the session {shown}: {e}")),
        }
    }

    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Takes one turn: the counter only moves once the new value is on disk, so a crash at any
    /// point leaves either the old session or the new one, never a torn or lost one.
    pub fn advance(&mut self) -> io::Result<u64> {
        let next = self
            .turns
            .checked_add(1)
            .ok_or_else(|| io::Error::other("the turn counter is at its maximum"))?;
        save(&self.file, next)?;
        self.turns = next;
        Ok(next)
    }
}

/// Whether the state in `dir` makes the agent die when it resumes it.
pub fn poisoned(dir: &Path) -> bool {
    dir.join(POISON_FILE).exists()
}

/// Writes the session durably: a temporary file, synced, renamed over the old one, and the
/// directory synced so that the rename itself survives a power cut.
fn save(file: &Path, turns: u64) -> io::Result<()> {
    let bytes = serde_json::to_vec(&SessionFile { turns })?;
    let temporary = file.with_extension("json.tmp");
    let mut out = File::create(&temporary)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    fs::rename(&temporary, file)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "carapace-test-agent-unit-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_fresh_session_is_created_and_turns_are_kept() {
        let dir = scratch("fresh");
        let mut session = Session::open(&dir).expect("a new session");
        assert_eq!(session.turns(), 0);
        assert_eq!(session.advance().expect("saved"), 1);
        assert_eq!(session.advance().expect("saved"), 2);
        let text = fs::read_to_string(dir.join(SESSION_FILE)).expect("session file");
        assert_eq!(text, r#"{"turns":2}"#);
        assert_eq!(Session::open(&dir).expect("reloaded").turns(), 2);
        assert!(!dir.join("session.json.tmp").exists());
        fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn an_unparseable_session_is_an_error_naming_the_file() {
        let dir = scratch("garbage");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(SESSION_FILE), "{\"turns\":").expect("write");
        let error = Session::open(&dir).expect_err("garbage");
        assert!(error.contains("session.json"), "{error}");
        assert!(!poisoned(&dir));
        fs::write(dir.join(POISON_FILE), "").expect("write");
        assert!(poisoned(&dir));
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
