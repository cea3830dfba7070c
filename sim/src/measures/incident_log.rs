//! Every incident of a run, 24 bytes each.
//!
//! A week of a large fleet closes tens of thousands of incidents, and each is kept until the
//! report writes incidents.csv: at 56 bytes an [`IncidentRecord`] was a tenth of the run's
//! heap. A row keeps the start in full, detection and recovery as `u32` milliseconds after it
//! (49 days), the class as an index into the log's names and the rung and the noticed flag in
//! one byte. A duration that does not fit (only a scenario longer than 49 days can make one)
//! is kept whole in a side map, so every record reads back exactly as it was pushed.

use super::{Fault, IncidentRecord};
use crate::class_name::ClassName;
use carapace_engine::growth::GrowGently;
use std::collections::BTreeMap;

/// No duration: the incident was not detected, or not recovered.
const ABSENT: u32 = u32::MAX;
/// The duration is in `wide`.
const WIDE: u32 = u32::MAX - 1;
const NOTICED: u8 = 0x80;

#[derive(Clone, Copy, Debug)]
struct Row {
    start_ms: u64,
    detection: u32,
    recovery: u32,
    agent: u32,
    class: u16,
    fault: Fault,
    /// The rung in the low bits, [`NOTICED`] on top.
    rung_noticed: u8,
}

/// Which of a row's durations a `wide` entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Span {
    Detection,
    Recovery,
}

/// The run's incidents in the order they closed.
#[derive(Clone, Debug, Default)]
pub struct IncidentLog {
    rows: Vec<Row>,
    classes: Vec<ClassName>,
    wide: BTreeMap<(usize, Span), u64>,
}

impl IncidentLog {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn push(&mut self, record: IncidentRecord) {
        assert!(
            record.rung < NOTICED,
            "a rung is a small number, got {}",
            record.rung
        );
        let index = self.rows.len();
        let class = self.class_index(&record.class);
        let detection = self.narrow(index, Span::Detection, record.detection_ms);
        let recovery = self.narrow(index, Span::Recovery, record.recovery_ms);
        self.rows.grow_gently();
        self.rows.push(Row {
            start_ms: record.start_ms,
            detection,
            recovery,
            agent: record.agent,
            class,
            fault: record.fault,
            rung_noticed: record.rung | if record.noticed { NOTICED } else { 0 },
        });
    }

    pub fn get(&self, index: usize) -> Option<IncidentRecord> {
        let row = self.rows.get(index)?;
        Some(IncidentRecord {
            agent: row.agent,
            class: self.classes[usize::from(row.class)].clone(),
            fault: row.fault,
            start_ms: row.start_ms,
            detection_ms: self.widen(index, Span::Detection, row.detection),
            recovery_ms: self.widen(index, Span::Recovery, row.recovery),
            rung: row.rung_noticed & !NOTICED,
            noticed: row.rung_noticed & NOTICED != 0,
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = IncidentRecord> + '_ {
        (0..self.rows.len()).map(|index| self.get(index).expect("index is in range"))
    }

    pub fn to_vec(&self) -> Vec<IncidentRecord> {
        self.iter().collect()
    }

    /// The shared name of `class`, for a record about to be pushed.
    pub fn class_name(&mut self, class: &str) -> ClassName {
        let index = self.class_index_of(|c| c.as_str() == class, || ClassName::new(class));
        self.classes[usize::from(index)].clone()
    }

    fn class_index(&mut self, class: &ClassName) -> u16 {
        self.class_index_of(|c| c == class, || class.clone())
    }

    /// Classes are few (the engine numbers them in a `u16`): a scan of those seen so far.
    fn class_index_of(
        &mut self,
        is: impl Fn(&ClassName) -> bool,
        name: impl FnOnce() -> ClassName,
    ) -> u16 {
        let index = match self.classes.iter().position(is) {
            Some(index) => index,
            None => {
                self.classes.push(name());
                self.classes.len() - 1
            }
        };
        u16::try_from(index).expect("at most 65,536 classes: the engine numbers them in a u16")
    }

    fn narrow(&mut self, index: usize, span: Span, ms: Option<u64>) -> u32 {
        match ms {
            None => ABSENT,
            Some(ms) => match u32::try_from(ms) {
                Ok(ms) if ms < WIDE => ms,
                _ => {
                    self.wide.insert((index, span), ms);
                    WIDE
                }
            },
        }
    }

    fn widen(&self, index: usize, span: Span, stored: u32) -> Option<u64> {
        match stored {
            ABSENT => None,
            WIDE => Some(self.wide[&(index, span)]),
            ms => Some(u64::from(ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn duration() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            (0..100_000u64).prop_map(Some),
            // Around the edges of the narrow form, and far past it.
            (u64::from(WIDE) - 2..u64::from(u32::MAX) + 2).prop_map(Some),
            any::<u64>().prop_map(Some),
        ]
    }

    fn record() -> impl Strategy<Value = IncidentRecord> {
        (
            any::<u32>(),
            0..3usize,
            0..Fault::ALL.len(),
            any::<u64>(),
            duration(),
            duration(),
            0u8..=4,
            any::<bool>(),
        )
            .prop_map(
                |(agent, class, fault, start_ms, detection_ms, recovery_ms, rung, noticed)| {
                    IncidentRecord {
                        agent,
                        class: ClassName::new(["web", "worker", "batch"][class]),
                        fault: Fault::ALL[fault],
                        start_ms,
                        detection_ms,
                        recovery_ms,
                        rung,
                        noticed,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_record_reads_back_as_pushed(records in prop::collection::vec(record(), 0..64)) {
            let mut log = IncidentLog::default();
            for record in &records {
                log.push(record.clone());
            }
            prop_assert_eq!(log.len(), records.len());
            prop_assert_eq!(log.to_vec(), records.clone());
            prop_assert_eq!(log.get(records.len()), None);
        }
    }

    #[test]
    fn a_row_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Row>(), 24);
    }

    #[test]
    fn durations_past_the_narrow_form_are_kept_whole() {
        let mut log = IncidentLog::default();
        let far = u64::from(u32::MAX) * 3;
        log.push(IncidentRecord {
            agent: 7,
            class: ClassName::new("web"),
            fault: Fault::Hang,
            start_ms: 1,
            detection_ms: Some(u64::from(WIDE)),
            recovery_ms: Some(far),
            rung: 3,
            noticed: true,
        });
        let back = log.get(0).expect("pushed");
        assert_eq!(back.detection_ms, Some(u64::from(WIDE)));
        assert_eq!(back.recovery_ms, Some(far));
        assert_eq!(log.wide.len(), 2);
    }
}
