//! Per-agent secrets (the LLM provider keys a gateway needs): write-only in the API, sealed at
//! rest with ChaCha20-Poly1305 under one key file, opened only to hand them to a pod.
//!
//! Each secret is sealed with a fresh random nonce and the agent and the secret's name as
//! associated data, so a sealed value moved to another agent or name does not open. The key
//! file must be readable by its owner only: the daemon refuses to read it otherwise.

use carapace_engine::AgentId;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Desired-state kind of an agent's sealed secrets in the store.
pub const SECRETS: &str = "secrets";
/// Bounds on what one agent may hold.
pub const MAX_SECRETS: usize = 64;
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// One sealed secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    nonce_hex: String,
    ciphertext_hex: String,
}

/// An agent's secrets by name, sealed.
pub type AgentSecrets = BTreeMap<String, Sealed>;

/// The daemon's sealing key.
pub struct Vault {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never leaves the vault, not even in a debug print.
        f.write_str("Vault")
    }
}

impl Vault {
    /// Reads the key file, or creates it (mode 0600) with a fresh key when it is missing.
    pub fn open_or_create(path: &Path) -> Result<Vault, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let key = match std::fs::metadata(path) {
            Ok(metadata) => {
                let mode = metadata.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{}: the secrets key is readable by others (mode {mode:o}); it must be 0600",
                        path.display()
                    ));
                }
                let key = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                if key.len() != KEY_BYTES {
                    return Err(format!(
                        "{}: a secrets key is {KEY_BYTES} bytes, this file has {}",
                        path.display(),
                        key.len()
                    ));
                }
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path)?,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Vault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub fn seal(&self, agent: AgentId, name: &str, value: &[u8]) -> Sealed {
        let nonce = random::<NONCE_BYTES>();
        let aad = associated(agent, name);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("sealing a bounded value cannot fail");
        Sealed {
            nonce_hex: hex(&nonce),
            ciphertext_hex: hex(&ciphertext),
        }
    }

    /// The value, or an error that names the secret but never shows its bytes.
    pub fn open(&self, agent: AgentId, name: &str, sealed: &Sealed) -> Result<Vec<u8>, String> {
        let broken =
            || format!("secret `{name}` of {agent} does not open (tampered, or another key)");
        let nonce = unhex(&sealed.nonce_hex)
            .filter(|n| n.len() == NONCE_BYTES)
            .ok_or_else(broken)?;
        let ciphertext = unhex(&sealed.ciphertext_hex).ok_or_else(broken)?;
        let aad = associated(agent, name);
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| broken())
    }
}

/// A secret's name is an environment variable's: it is handed to the agent as one.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if first_ok
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(
            "secret name: must be an environment variable name ([A-Z_][A-Z0-9_]*, at most 128)"
                .into(),
        )
    }
}

fn associated(agent: AgentId, name: &str) -> Vec<u8> {
    format!("carapace-secret/{}/{name}", agent.0).into_bytes()
}

fn create_key(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = random::<KEY_BYTES>().to_vec();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

fn random<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("the kernel's random source is readable");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> (Vault, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("carapace-vault-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (Vault::open_or_create(&path).expect("a new key"), path)
    }

    #[test]
    fn a_sealed_secret_opens_for_its_agent_and_name_only() {
        let (vault, path) = vault();
        let sealed = vault.seal(AgentId(3), "OPENAI_API_KEY", b"sk-canary");
        assert!(!format!("{sealed:?}").contains("sk-canary"));
        assert_eq!(
            vault.open(AgentId(3), "OPENAI_API_KEY", &sealed).unwrap(),
            b"sk-canary"
        );
        assert!(vault.open(AgentId(4), "OPENAI_API_KEY", &sealed).is_err());
        let error = vault.open(AgentId(3), "OTHER", &sealed).unwrap_err();
        assert!(!error.contains("sk-canary"), "{error}");
        let again = Vault::open_or_create(&path).expect("the same key");
        assert_eq!(
            again.open(AgentId(3), "OPENAI_API_KEY", &sealed).unwrap(),
            b"sk-canary"
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_, path) = vault();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Vault::open_or_create(&path).unwrap_err();
        assert!(error.contains("0600"), "{error}");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn names_are_environment_variables() {
        assert!(check_name("OPENAI_API_KEY").is_ok());
        assert!(check_name("_X1").is_ok());
        for bad in ["", "lower", "1X", "A-B", "A B", "A=B"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
