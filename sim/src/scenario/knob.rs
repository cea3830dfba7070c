//! Setting one field of a scenario by its dotted path (`policy.placement.overcommit_ratio`,
//! `fleet.nodes`, `fleet.classes[0].agents`), as `tune` and `explore` do. The scenario goes
//! through its serialised form and back through every check a file goes through, so a knob
//! can never produce a scenario a file could not.

use super::{Scenario, load};
use toml::Value;

/// A knob that could not be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("knob `{path}`: {problem}")]
pub struct KnobError {
    pub path: String,
    pub problem: String,
}

/// The scenario with `path` set to `value`. Integer fields take the value rounded; size and
/// duration fields take it as bytes and milliseconds.
pub fn set(scenario: &Scenario, path: &str, value: f64) -> Result<Scenario, KnobError> {
    let error = |problem: String| KnobError {
        path: path.to_owned(),
        problem,
    };
    if !value.is_finite() {
        return Err(error("value must be a finite number".into()));
    }
    let mut root = Value::try_from(scenario).map_err(|e| error(e.to_string()))?;
    let slot =
        locate(&mut root, path).ok_or_else(|| error("names no field of the scenario".into()))?;
    *slot = match slot {
        Value::Float(_) => Value::Float(value),
        Value::Integer(_) | Value::String(_) if value >= 0.0 && value <= i64::MAX as f64 => {
            Value::Integer(value.round() as i64)
        }
        Value::Integer(_) | Value::String(_) => {
            return Err(error(format!("{value} is out of range")));
        }
        Value::Boolean(_) => Value::Boolean(value != 0.0),
        other => return Err(error(format!("is a {}, not a number", other.type_str()))),
    };
    let text = toml::to_string(&root).map_err(|e| error(e.to_string()))?;
    load::parse_str(&text, "<knob>").map_err(|e| {
        let problems: Vec<String> = e
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        error(problems.join("; "))
    })
}

/// The current value at `path`, as a number.
pub fn get(scenario: &Scenario, path: &str) -> Result<f64, KnobError> {
    let error = |problem: &str| KnobError {
        path: path.to_owned(),
        problem: problem.to_owned(),
    };
    let mut root = Value::try_from(scenario).map_err(|e| error(&e.to_string()))?;
    let slot = locate(&mut root, path).ok_or_else(|| error("names no field of the scenario"))?;
    match slot {
        Value::Float(f) => Ok(*f),
        Value::Integer(i) => Ok(*i as f64),
        Value::String(s) => s
            .parse::<super::Bytes>()
            .map(|b| b.0 as f64)
            .or_else(|_| s.parse::<super::Span>().map(|d| d.ms() as f64))
            .map_err(|_| error("is not a number")),
        _ => Err(error("is not a number")),
    }
}

fn locate<'v>(root: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut current = root;
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        current = current.as_table_mut()?.get_mut(key)?;
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            current = current
                .as_array_mut()?
                .get_mut(index.parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../../../scenarios/smoke.toml");

    #[test]
    fn knobs_set_floats_integers_and_units_and_are_checked() {
        let base = load::parse_str(SMOKE, "smoke.toml").unwrap();
        let s = set(&base, "policy.placement.overcommit_ratio", 2.5).unwrap();
        assert_eq!(s.policy.placement.overcommit_ratio, 2.5);
        let s = set(&base, "fleet.nodes", 9.4).unwrap();
        assert_eq!(s.fleet.nodes, 9);
        let s = set(&base, "fleet.classes[1].agents", 3.0).unwrap();
        assert_eq!(s.fleet.classes[1].agents, 3);
        let s = set(&base, "fleet.node_memory", 8.0 * 1073741824.0).unwrap();
        assert_eq!(s.fleet.node_memory.0, 8 << 30);
        assert_eq!(get(&s, "fleet.node_memory").unwrap(), (8u64 << 30) as f64);
        assert_eq!(
            get(&base, "policy.placement.overcommit_ratio").unwrap(),
            3.0
        );
        assert!(set(&base, "policy.placement.nonsense", 1.0).is_err());
        let refused = set(&base, "fleet.nodes", 0.0).unwrap_err();
        assert!(refused.problem.contains("fleet.nodes"), "{refused}");
        assert!(set(&base, "fleet.nodes", f64::NAN).is_err());
    }
}
