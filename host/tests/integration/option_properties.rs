//! Property tests of the host's option checks: whatever a hub sends, the
//! checks never panic, and what they accept is inside the schema.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wasmspawner_host::form::check;
use wasmspawner_host::model::{Choice, Field, FieldKind, FormSchema, Value};

fn schema() -> FormSchema {
    let f = |id: &str, required: bool, default: Option<&str>, kind| Field {
        id: id.into(),
        label: id.into(),
        help: String::new(),
        default: default.map(str::to_string),
        required,
        kind,
    };
    FormSchema {
        fields: vec![
            f(
                "cores",
                true,
                Some("1"),
                FieldKind::Integer {
                    min: Some(1),
                    max: Some(64),
                    step: None,
                    unit: None,
                },
            ),
            f(
                "mem",
                false,
                None,
                FieldKind::Number {
                    min: Some(0.5),
                    max: Some(512.0),
                    step: Some(0.5),
                    unit: Some("GiB".into()),
                },
            ),
            f(
                "queue",
                true,
                None,
                FieldKind::Choice {
                    choices: vec![
                        Choice {
                            value: "short".into(),
                            label: "Short".into(),
                        },
                        Choice {
                            value: "long".into(),
                            label: "Long".into(),
                        },
                    ],
                },
            ),
            f(
                "account",
                false,
                None,
                FieldKind::Text {
                    max_length: Some(16),
                    pattern: Some("[a-z][a-z0-9_]*".into()),
                    placeholder: None,
                },
            ),
            f(
                "note",
                false,
                None,
                FieldKind::Text {
                    max_length: Some(40),
                    pattern: None,
                    placeholder: None,
                },
            ),
            f("gpu", false, None, FieldKind::Boolean),
        ],
        profiles: vec![],
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cores".to_string()),
        Just("mem".to_string()),
        Just("queue".to_string()),
        Just("account".to_string()),
        Just("note".to_string()),
        Just("gpu".to_string()),
        "[a-z_]{1,8}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,4}",
        "-?[0-9]{1,3}\\.[0-9]{1,2}",
        "short|long|medium",
        "[a-z][a-z0-9_]{0,20}",
        "\\PC{0,50}",
        ".{0,20}",
        "true|false|on|off|maybe",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepted_options_are_inside_the_schema(raw in prop::collection::btree_map(key(), prop::collection::vec(value(), 0..3), 0..8)) {
        let raw: BTreeMap<String, Vec<String>> = raw;
        if let Ok(o) = check(&schema(), &raw) {
            match &o["cores"] { Value::Integer(c) => prop_assert!((1..=64).contains(c)), v => prop_assert!(false, "cores {v:?}") }
            match &o["queue"] { Value::Text(q) => prop_assert!(q == "short" || q == "long"), v => prop_assert!(false, "queue {v:?}") }
            if let Some(v) = o.get("mem") {
                let Value::Number(m) = v else { return Err(TestCaseError::fail("mem type")) };
                prop_assert!((0.5..=512.0).contains(m) && (m * 2.0).fract() == 0.0);
            }
            if let Some(Value::Text(a)) = o.get("account") {
                prop_assert!(a.len() <= 16 && a.chars().next().unwrap().is_ascii_lowercase());
                prop_assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            }
            if let Some(Value::Text(n)) = o.get("note") {
                prop_assert!(n.chars().count() <= 40 && !n.chars().any(char::is_control));
            }
            prop_assert!(matches!(o["gpu"], Value::Boolean(_)));
            // Nothing outside the schema.
            prop_assert!(o.keys().all(|k| schema().fields.iter().any(|f| &f.id == k)));
        }
    }
}
