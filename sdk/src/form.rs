//! Builders for form fields, so a schema reads like the form it describes.
//!
//! ```
//! use wasmspawner_sdk::form::*;
//! let f = integer_field("cores", "CPU cores", Some(1), Some(32))
//!     .help("Cores for your server")
//!     .default_value("2")
//!     .required();
//! assert_eq!(f.id, "cores");
//! ```

use crate::{Choice, Field, FieldKind, IntegerField, NumberField, TextField};

pub fn text_field(id: &str, label: &str) -> Field {
    field(
        id,
        label,
        FieldKind::Text(TextField {
            max_length: Some(256),
            pattern: None,
            placeholder: None,
        }),
    )
}

pub fn integer_field(id: &str, label: &str, min: Option<i64>, max: Option<i64>) -> Field {
    field(
        id,
        label,
        FieldKind::Integer(IntegerField {
            min,
            max,
            step: None,
            unit: None,
        }),
    )
}

pub fn number_field(id: &str, label: &str, min: Option<f64>, max: Option<f64>) -> Field {
    field(
        id,
        label,
        FieldKind::Number(NumberField {
            min,
            max,
            step: None,
            unit: None,
        }),
    )
}

/// A choice among `(value, label)` pairs.
pub fn choice_field<'a>(
    id: &str,
    label: &str,
    choices: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Field {
    field(
        id,
        label,
        FieldKind::Choice(
            choices
                .into_iter()
                .map(|(value, label)| Choice {
                    value: value.to_string(),
                    label: label.to_string(),
                })
                .collect(),
        ),
    )
}

pub fn boolean_field(id: &str, label: &str) -> Field {
    field(id, label, FieldKind::Boolean)
}

fn field(id: &str, label: &str, kind: FieldKind) -> Field {
    Field {
        id: id.to_string(),
        label: label.to_string(),
        help: String::new(),
        default: None,
        required: false,
        kind,
    }
}

impl Field {
    pub fn help(mut self, help: &str) -> Self {
        self.help = help.to_string();
        self
    }
    pub fn default_value(mut self, value: impl Into<String>) -> Self {
        self.default = Some(value.into());
        self
    }
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Sets a text field's pattern (a regex the whole value must match).
    pub fn pattern(mut self, pattern: &str) -> Self {
        if let FieldKind::Text(t) = &mut self.kind {
            t.pattern = Some(pattern.to_string());
        }
        self
    }
    /// Sets a text field's maximum length in characters.
    pub fn max_length(mut self, n: u32) -> Self {
        if let FieldKind::Text(t) = &mut self.kind {
            t.max_length = Some(n);
        }
        self
    }
    /// Sets the unit shown next to a number box.
    pub fn unit(mut self, unit: &str) -> Self {
        match &mut self.kind {
            FieldKind::Integer(i) => i.unit = Some(unit.to_string()),
            FieldKind::Number(n) => n.unit = Some(unit.to_string()),
            _ => {}
        }
        self
    }
}
