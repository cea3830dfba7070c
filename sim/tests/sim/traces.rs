//! The trace adapters on the real public samples in ../shared/traces/raw (never copied here).

use crate::common::shared_traces;
use carapace_sim::scenario::{Bytes, MemoryTrace, TraceFormat};
use carapace_sim::trace::{self, MemorySeries};
use std::collections::BTreeMap;
use std::io::Read;

const ALIBABA: &str = "alibaba-gentd26-pod_memory_util_anon.tar.gz";
const BITBRAINS: &str = "bitbrains-rnd-2013-7-417.csv";

fn load(path: &str, format: TraceFormat) -> MemorySeries {
    let spec = MemoryTrace {
        path: path.into(),
        format,
        scale_to: None,
    };
    trace::load(&spec, &shared_traces()).unwrap_or_else(|e| panic!("{e}"))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The CSV inside the archive, read independently of the adapter: (value, seconds, pod).
/// Timestamps are written as floats (`1662858720.0`).
fn alibaba_rows() -> Vec<(f64, f64, String)> {
    let raw = std::fs::read(shared_traces().join(ALIBABA)).expect("the Alibaba sample");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
    let mut member = archive
        .entries()
        .expect("a tar archive")
        .next()
        .expect("one member")
        .expect("readable member");
    let mut text = String::new();
    member.read_to_string(&mut text).expect("UTF-8 CSV");
    text.lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split(',');
            let value = fields.next().unwrap().parse().unwrap();
            let seconds = fields.next().unwrap().parse().unwrap();
            (value, seconds, fields.next().unwrap().to_owned())
        })
        .collect()
}

/// The sample itself, read without the adapter: what the adapter must reproduce.
#[test]
fn alibaba_gentd26_sample_holds_what_its_readme_says() {
    let rows = alibaba_rows();
    assert_eq!(rows.len(), 214_890, "data rows in the sample");
    let mut pods: BTreeMap<&str, (f64, u32)> = BTreeMap::new();
    for (value, seconds, pod) in &rows {
        assert_eq!(seconds.fract(), 0.0, "whole seconds");
        assert_eq!((seconds - 1_662_858_720.0) % 57.0, 0.0, "on the 57 s grid");
        let entry = pods.entry(pod.as_str()).or_default();
        entry.0 += value;
        entry.1 += 1;
    }
    assert_eq!(pods.len(), 208, "pods");
    let mut means: Vec<f64> = pods.values().map(|(sum, n)| sum / f64::from(*n)).collect();
    means.sort_by(f64::total_cmp);
    let p50 = quantile(&means, 0.5);
    assert!((p50 - 0.40).abs() < 0.02, "per-pod mean p50 {p50}");
}

#[test]
fn alibaba_gentd26_adapter_reads_all_208_pods() {
    let series = load(ALIBABA, TraceFormat::AlibabaGentd26);
    let rows = alibaba_rows();
    assert_eq!(series.len(), 208, "pods");
    // 1,441 instants on a 57 s grid: the longest pod spans 1,440 steps.
    assert_eq!(series.period_ms(), 1_440 * 57_000 + 1);
    // The adapter's mean over every sample equals one computed from the raw rows: it read
    // all of them, as fractions.
    let raw_mean = rows.iter().map(|r| r.0).sum::<f64>() / rows.len() as f64;
    let (mean, max) = series.sample_stats();
    assert!((mean - raw_mean).abs() < 1e-9, "{mean} against {raw_mean}");
    assert!((0.99..0.994).contains(&max), "max utilisation {max}");

    // Per-pod mean utilisation, replayed at the trace's own cadence as fractions of a limit.
    let limit = 1_000_000_000u64;
    let mut means: Vec<f64> = (0..series.len())
        .map(|pod| {
            let samples: Vec<f64> = (0..1_441u64)
                .map(|k| series.value_at(pod, k * 57_000, limit) as f64 / limit as f64)
                .collect();
            samples.iter().sum::<f64>() / samples.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let (p10, p50, p90) = (
        quantile(&means, 0.1),
        quantile(&means, 0.5),
        quantile(&means, 0.9),
    );
    assert!((p50 - 0.40).abs() < 0.03, "per-pod mean p50 {p50}");
    assert!((p10 - 0.06).abs() < 0.03, "per-pod mean p10 {p10}");
    assert!((p90 - 0.80).abs() < 0.03, "per-pod mean p90 {p90}");
}

#[test]
fn alibaba_fractions_scale_to_the_configured_limit() {
    let spec = MemoryTrace {
        path: ALIBABA.into(),
        format: TraceFormat::AlibabaGentd26,
        scale_to: Some(Bytes(2_000_000_000)),
    };
    let scaled = trace::load(&spec, &shared_traces()).expect("loads");
    let plain = load(ALIBABA, TraceFormat::AlibabaGentd26);
    for pod in [0, 17, 207] {
        for at in [0, 57_000 * 100, 57_000 * 1_000] {
            let a = scaled.value_at(pod, at, 999) as f64;
            let b = plain.value_at(pod, at, 1_000_000_000) as f64;
            assert!(
                (a - 2.0 * b).abs() <= 2.0,
                "pod {pod} at {at}: {a} vs 2 × {b}"
            );
        }
    }
}

#[test]
fn bitbrains_adapter_reads_one_vm_in_absolute_bytes() {
    let series = load(BITBRAINS, TraceFormat::Bitbrains);
    assert_eq!(series.len(), 1, "one VM");
    let provisioned = 6_160_384.0 * 1024.0;
    let (mean, max) = series.sample_stats();
    assert!(
        (mean / provisioned - 0.17).abs() < 0.01,
        "mean {:.3} of provisioned",
        mean / provisioned
    );
    assert!(
        (max / provisioned - 0.95).abs() < 0.01,
        "peak {:.3} of provisioned",
        max / provisioned
    );
    // 2013-06-30 22:03 to 2013-07-30 21:57 UTC: just under 30 days.
    let days = series.period_ms() as f64 / 86_400_000.0;
    assert!((29.9..30.0).contains(&days), "{days} days");
    // The raw file, read without the adapter.
    let text = std::fs::read_to_string(shared_traces().join(BITBRAINS)).expect("the sample");
    let kb: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|line| line.split(";\t").nth(6).unwrap().parse().unwrap())
        .collect();
    assert_eq!(kb.len(), 8_630, "samples");
    let raw_mean = kb.iter().sum::<f64>() / kb.len() as f64 * 1024.0;
    assert!(
        (mean / raw_mean - 1.0).abs() < 1e-12,
        "{mean} against {raw_mean}"
    );
    let raw_steps = 1 + kb.windows(2).filter(|w| w[0] != w[1]).count();
    // Replayed every 10 s (samples are ~300 s apart), the value changes as often as the raw
    // samples do; the last sample is held for 1 ms only before the replay wraps.
    let mut steps = 0;
    let mut last = u64::MAX;
    for at in (0..series.period_ms()).step_by(10_000) {
        let value = series.value_at(0, at, 0);
        if value != last {
            steps += 1;
            last = value;
        }
    }
    assert!(
        (raw_steps - 1..=raw_steps).contains(&steps),
        "{steps} steps replayed, {raw_steps} in the file"
    );
    // Absolute: the limit passed in is ignored.
    assert_eq!(series.value_at(0, 0, 1), series.value_at(0, 0, u64::MAX));
}
