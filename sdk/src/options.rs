//! Typed access to validated options.

use crate::{FieldError, FieldValue, Value};

/// The validated options of a spawn: field id → typed value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options(Vec<FieldValue>);

impl From<Vec<FieldValue>> for Options {
    fn from(v: Vec<FieldValue>) -> Self {
        Options(v)
    }
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_inner(self) -> Vec<FieldValue> {
        self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldValue> {
        self.0.iter()
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.iter().find(|o| o.field == field).map(|o| &o.value)
    }

    /// A text or choice value.
    pub fn text(&self, field: &str) -> Option<&str> {
        match self.get(field) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn integer(&self, field: &str) -> Option<i64> {
        match self.get(field) {
            Some(Value::Integer(i)) => Some(*i),
            _ => None,
        }
    }

    /// A number; integers are widened.
    pub fn number(&self, field: &str) -> Option<f64> {
        match self.get(field) {
            Some(Value::Number(n)) => Some(*n),
            Some(Value::Integer(i)) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn boolean(&self, field: &str) -> Option<bool> {
        match self.get(field) {
            Some(Value::Boolean(b)) => Some(*b),
            _ => None,
        }
    }

    /// Sets (or replaces) a value.
    pub fn set(&mut self, field: &str, value: Value) {
        match self.0.iter_mut().find(|o| o.field == field) {
            Some(o) => o.value = value,
            None => self.0.push(FieldValue {
                field: field.to_string(),
                value,
            }),
        }
    }

    /// The value as the string a template sees (`true`/`false`, numbers in
    /// their shortest form).
    pub fn display(&self, field: &str) -> Option<String> {
        self.get(field).map(value_to_string)
    }
}

/// The string form of a value, as a template or an argv sees it.
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Boolean(b) => b.to_string(),
    }
}

/// A field error, for `validate`.
pub fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}
