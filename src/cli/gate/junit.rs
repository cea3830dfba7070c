//! JUnit XML for CI systems: one `<testsuite>` per scenario, one `<testcase>` per SLO plus one
//! for the engine's invariants. Every test case carries its measured value, target and
//! baseline in `<system-out>`; a failed one also in `<failure message=...>`. No wall-clock
//! times: the same runs give the same bytes.

use super::check::Outcome;
use std::fmt::Write as _;

/// The whole document.
pub fn render(outcomes: &[Outcome], seeds: u32) -> String {
    let tests: usize = outcomes.iter().map(|o| o.slo.len() + 1).sum();
    let failures: usize = outcomes.iter().map(failures_of).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"carapace check\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">",
            escape(&o.scenario),
            o.slo.len() + 1,
            failures_of(o)
        );
        let _ = writeln!(
            out,
            "    <properties>\n      <property name=\"file\" value=\"{}\"/>\n      <property name=\"seeds\" value=\"{}\"/>\n    </properties>",
            escape(&o.file),
            escape(&format!("{seeds} ({})", seed_range(&o.seeds)))
        );
        let class = escape(&format!("carapace.check.{}", o.scenario));
        for s in &o.slo {
            let failure = (s.breach || s.regression).then_some(s.verdict);
            testcase(&mut out, &class, &s.name, &s.message, failure);
        }
        let (held, ok) = o.invariants();
        let message = format!("invariants: {held}");
        testcase(
            &mut out,
            &class,
            "invariants",
            &message,
            (!ok).then_some("INVARIANT"),
        );
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn testcase(out: &mut String, class: &str, name: &str, message: &str, failure: Option<&str>) {
    let _ = writeln!(
        out,
        "    <testcase classname=\"{class}\" name=\"{}\">",
        escape(name)
    );
    if let Some(kind) = failure {
        let _ = writeln!(
            out,
            "      <failure message=\"{}\" type=\"{}\">{}</failure>",
            escape(message),
            escape(kind),
            escape(message)
        );
    }
    let _ = writeln!(out, "      <system-out>{}</system-out>", escape(message));
    out.push_str("    </testcase>\n");
}

fn failures_of(o: &Outcome) -> usize {
    let slo = o.slo.iter().filter(|s| s.breach || s.regression).count();
    slo + usize::from(!o.invariant_violations.is_empty())
}

fn seed_range(seeds: &[u64]) -> String {
    match (seeds.first(), seeds.last()) {
        (Some(first), Some(last)) if first != last => format!("{first}..={last}"),
        (Some(first), _) => first.to_string(),
        _ => String::new(),
    }
}

/// Escapes text for an XML attribute or element. Characters XML 1.0 cannot hold at all
/// (control characters other than tab, newline and carriage return) become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_quotes_and_control_characters() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(escape("x\ny\u{1}z"), "x&#10;y\u{FFFD}z");
        assert_eq!(escape("<= 60 s"), "&lt;= 60 s");
    }
}
