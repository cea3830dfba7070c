//! `carapace schema` prints the scenario JSON Schema, as valid JSON.

use crate::common::carapace;

#[test]
fn schema_prints_valid_json() {
    let run = carapace(["schema"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
    assert_eq!(schema["title"], "Scenario");
    for field in ["name", "seed", "duration", "fleet"] {
        assert!(
            schema["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f == field)),
            "`{field}` is not required in {}",
            schema["required"]
        );
    }
    assert_eq!(run.stdout, carapace_sim::scenario::json_schema() + "\n");
}
