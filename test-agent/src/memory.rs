//! Memory on demand: the `/spike` fault, a gateway whose resident memory really grows.

use std::collections::TryReserveError;

/// Memory the agent holds on purpose, in the blocks it was asked for.
#[derive(Debug, Default)]
pub struct Ballast {
    blocks: Vec<Vec<u8>>,
}

impl Ballast {
    /// Allocates `bytes` more and writes every one of them, so every page is resident rather
    /// than merely reserved: RSS, what a cgroup limit and the OOM killer see, grows by `bytes`.
    pub fn grow(&mut self, bytes: usize) -> Result<(), TryReserveError> {
        let mut block = Vec::new();
        // A size no allocator can give is an error for the client, not an abort of the agent.
        block.try_reserve_exact(bytes)?;
        block.resize(bytes, 0xA5);
        self.blocks.push(block);
        Ok(())
    }

    /// Frees everything held. Large blocks are returned to the kernel, so RSS falls back.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }

    pub fn held(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
}

/// This process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

fn page_size() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_is_held_and_released() {
        let mut ballast = Ballast::default();
        ballast.grow(1 << 20).expect("1 MiB");
        ballast.grow(4096).expect("a page");
        assert_eq!(ballast.held(), (1 << 20) + 4096);
        ballast.release();
        assert_eq!(ballast.held(), 0);
        assert!(ballast.grow(usize::MAX).is_err(), "refused, not aborted");
    }

    #[test]
    fn rss_is_readable_and_plausible() {
        let rss = rss_bytes().expect("/proc/self/statm");
        assert!(rss > 4096, "{rss}");
    }
}
