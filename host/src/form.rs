//! The host's own checks of submitted options against a plugin's form
//! schema: types, ranges, steps, choices, lengths, patterns and profiles.
//! The plugin's `validate` sees only values that passed these.
//!
//! Input is what a form or REST call sends: field id → list of strings.
//! Every field takes at most one value; an absent or empty value takes the
//! field's default; an absent boolean is `false` (an unchecked checkbox sends
//! nothing). Unknown fields are refused, not ignored, so a typo is visible.

use crate::model::{Bound, Field, FieldError, FieldKind, FormSchema, Options, RawOptions, Value};

/// The reserved field that selects a profile.
pub const PROFILE_FIELD: &str = "profile";
/// Longest value accepted for any field (bytes), whatever the schema says.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most fields accepted in one request.
pub const MAX_FIELDS: usize = 256;
/// Longest pattern a plugin's text field may have (bytes).
pub const MAX_PATTERN: usize = 512;
/// Longest label, unit, placeholder or choice a plugin's form may have.
pub const MAX_LABEL: usize = 256;
/// Longest help or profile description.
pub const MAX_HELP: usize = 2048;
/// Most choices of one field.
pub const MAX_CHOICES: usize = 512;
/// Memory a compiled field pattern may take.
const PATTERN_SIZE_LIMIT: usize = 256 << 10;

/// Checks a plugin's form before the host uses it: bounded sizes (so the
/// host's own work on it — pattern compiles, HTML, JSON — stays small; a
/// pattern is compiled only when a value is checked against it), and every
/// profile's fixed values passing the same checks as a user's value (type, range, choices, length, pattern, the
/// profile's bounds). The error names the field or the profile.
pub fn check_schema(schema: &FormSchema) -> Result<(), String> {
    let long = |what: &str, id: &str, t: &str, max: usize| {
        (t.len() > max).then(|| format!("field `{id}`: {what} is {} bytes; at most {max}", t.len()))
    };
    for f in &schema.fields {
        let id = f.id.as_str();
        if let Some(e) = long("the label", id, &f.label, MAX_LABEL)
            .or_else(|| long("the help", id, &f.help, MAX_HELP))
            .or_else(|| {
                long(
                    "the default",
                    id,
                    f.default.as_deref().unwrap_or(""),
                    MAX_VALUE_BYTES,
                )
            })
        {
            return Err(e);
        }
        match &f.kind {
            FieldKind::Text {
                pattern,
                placeholder,
                ..
            } => {
                if let Some(e) = long(
                    "the placeholder",
                    id,
                    placeholder.as_deref().unwrap_or(""),
                    MAX_LABEL,
                ) {
                    return Err(e);
                }
                if let Some(p) = pattern {
                    if p.len() > MAX_PATTERN {
                        return Err(format!(
                            "field `{id}`: its pattern is {} bytes; at most {MAX_PATTERN}",
                            p.len()
                        ));
                    }
                }
            }
            FieldKind::Integer { unit, .. } | FieldKind::Number { unit, .. } => {
                if let Some(e) = long("the unit", id, unit.as_deref().unwrap_or(""), MAX_LABEL) {
                    return Err(e);
                }
            }
            FieldKind::Choice { choices } => {
                if choices.len() > MAX_CHOICES {
                    return Err(format!(
                        "field `{id}`: {} choices; at most {MAX_CHOICES}",
                        choices.len()
                    ));
                }
                for c in choices {
                    if let Some(e) = long("a choice", id, &c.value, MAX_LABEL)
                        .or_else(|| long("a choice label", id, &c.label, MAX_LABEL))
                    {
                        return Err(e);
                    }
                }
            }
            FieldKind::Boolean => {}
        }
    }
    for p in &schema.profiles {
        if p.label.len() > MAX_LABEL || p.description.len() > MAX_HELP || p.id.len() > 64 {
            return Err(format!(
                "profile `{}`: its id, label or description is too long (64, {MAX_LABEL}, {MAX_HELP} bytes)",
                crate::sanitize::text(&p.id, 64)
            ));
        }
        for (key, value) in &p.fixed {
            // A field the site config turned off: the value never reaches
            // the options (`check` only keeps the form's fields).
            let Some(field) = schema.fields.iter().find(|f| &f.id == key) else {
                continue;
            };
            check_value(field, value)
                .and_then(|()| match p.bounds.iter().find(|b| &b.field == key) {
                    Some(b) => check_bound(field, b, value),
                    None => Ok(()),
                })
                .map_err(|m| format!("profile `{}`, field `{key}`: fixed value {m}", p.id))?;
        }
    }
    Ok(())
}

/// A typed value (a profile's fixed one) through the same checks as text a
/// user typed.
fn check_value(field: &Field, value: &Value) -> Result<(), String> {
    let text = match (&field.kind, value) {
        (FieldKind::Text { .. } | FieldKind::Choice { .. }, Value::Text(t)) => t.clone(),
        (FieldKind::Integer { .. }, Value::Integer(i)) => i.to_string(),
        (FieldKind::Number { .. }, Value::Number(n)) => n.to_string(),
        (FieldKind::Number { .. }, Value::Integer(i)) => i.to_string(),
        (FieldKind::Boolean, Value::Boolean(_)) => return Ok(()),
        (_, v) => return Err(format!("{v:?} has the wrong type for {}", field.label)),
    };
    if text.len() > MAX_VALUE_BYTES {
        return Err(format!("is longer than {MAX_VALUE_BYTES} bytes"));
    }
    // Untrimmed: a fixed value is used exactly as given.
    parse(field, &text).map(|_| ())
}

/// Compiled patterns kept between calls (a form's patterns recur at every
/// form and validate call); emptied when it holds this many.
const PATTERN_CACHE: usize = 1024;

fn compile(p: &str) -> Result<regex::Regex, String> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static CACHE: LazyLock<Mutex<HashMap<String, regex::Regex>>> = LazyLock::new(Default::default);
    if let Some(re) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get(p) {
        return Ok(re.clone());
    }
    let re = regex::RegexBuilder::new(&format!("^(?:{p})$"))
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("the plugin's pattern is invalid or too large: {e}"))?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= PATTERN_CACHE {
        cache.clear();
    }
    cache.insert(p.to_string(), re.clone());
    Ok(re)
}

pub fn check(schema: &FormSchema, raw: &RawOptions) -> Result<Options, Vec<FieldError>> {
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<FieldError>, field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    if raw.len() > MAX_FIELDS {
        err(
            &mut errors,
            "",
            format!("too many fields ({}); at most {MAX_FIELDS}", raw.len()),
        );
        return Err(errors);
    }
    for key in raw.keys() {
        let known = schema.fields.iter().any(|f| &f.id == key)
            || (key == PROFILE_FIELD && !schema.profiles.is_empty());
        if !known {
            err(
                &mut errors,
                key,
                format!(
                    "unknown option {key:?}; this form has: {}",
                    field_list(schema)
                ),
            );
        }
    }

    // The profile, if the form has any.
    let profile = if schema.profiles.is_empty() {
        None
    } else {
        match single(raw, PROFILE_FIELD) {
            Err(m) => {
                err(&mut errors, PROFILE_FIELD, m);
                None
            }
            Ok(None) => schema.profiles.first(),
            Ok(Some(id)) => match schema.profiles.iter().find(|p| p.id == id) {
                Some(p) => Some(p),
                None => {
                    let ids: Vec<&str> = schema.profiles.iter().map(|p| p.id.as_str()).collect();
                    err(
                        &mut errors,
                        PROFILE_FIELD,
                        format!("unknown profile {id:?}; choose one of {}", ids.join(", ")),
                    );
                    None
                }
            },
        }
    };

    let mut out = Options::new();
    if let Some(p) = profile {
        out.insert(PROFILE_FIELD.into(), Value::Text(p.id.clone()));
    }
    for field in &schema.fields {
        if let Some(fixed) = profile.and_then(|p| p.fixed.get(&field.id)) {
            // Checked like a typed value (also by `check_schema` up front).
            match check_value(field, fixed) {
                Ok(()) => {
                    out.insert(field.id.clone(), fixed.clone());
                }
                Err(m) => err(
                    &mut errors,
                    &field.id,
                    format!("the profile's fixed value {m}"),
                ),
            }
            continue;
        }
        let given = match single(raw, &field.id) {
            Ok(v) => v,
            Err(m) => {
                err(&mut errors, &field.id, m);
                continue;
            }
        };
        let text = match given.filter(|s| !s.is_empty()).or(field.default.as_deref()) {
            Some(t) => t,
            None => {
                if matches!(field.kind, FieldKind::Boolean) {
                    out.insert(field.id.clone(), Value::Boolean(false));
                } else if field.required {
                    err(
                        &mut errors,
                        &field.id,
                        format!("{} is required", field.label),
                    );
                }
                continue;
            }
        };
        match parse(field, text) {
            Ok(v) => {
                let bound = profile.and_then(|p| p.bounds.iter().find(|b| b.field == field.id));
                match bound.map(|b| check_bound(field, b, &v)).unwrap_or(Ok(())) {
                    Ok(()) => {
                        out.insert(field.id.clone(), v);
                    }
                    Err(m) => err(&mut errors, &field.id, m),
                }
            }
            Err(m) => err(&mut errors, &field.id, m),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn field_list(schema: &FormSchema) -> String {
    let mut ids: Vec<&str> = schema.fields.iter().map(|f| f.id.as_str()).collect();
    if !schema.profiles.is_empty() {
        ids.push(PROFILE_FIELD);
    }
    if ids.is_empty() {
        "no fields".into()
    } else {
        ids.join(", ")
    }
}

fn single<'a>(raw: &'a RawOptions, id: &str) -> Result<Option<&'a str>, String> {
    match raw.get(id).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => {
            if v.len() > MAX_VALUE_BYTES {
                Err(format!("is longer than {MAX_VALUE_BYTES} bytes"))
            } else {
                Ok(Some(v.trim()))
            }
        }
        Some(vs) => Err(format!("expects one value, got {}", vs.len())),
    }
}

fn parse(field: &Field, text: &str) -> Result<Value, String> {
    let label = &field.label;
    match &field.kind {
        FieldKind::Text {
            max_length,
            pattern,
            ..
        } => {
            if text.chars().any(char::is_control) {
                return Err(format!(
                    "{label} may not contain control characters (newlines, tabs, NUL)"
                ));
            }
            if let Some(max) = max_length {
                if text.chars().count() > *max as usize {
                    return Err(format!("{label} is longer than {max} characters"));
                }
            }
            if let Some(p) = pattern {
                if p.len() > MAX_PATTERN {
                    return Err(format!(
                        "the plugin's pattern for {label} is longer than {MAX_PATTERN} bytes"
                    ));
                }
                let re = compile(p).map_err(|e| format!("{label}: {e}"))?;
                if !re.is_match(text) {
                    return Err(format!(
                        "{label} {text:?} does not have the expected form ({p})"
                    ));
                }
            }
            Ok(Value::Text(text.to_string()))
        }
        FieldKind::Integer {
            min,
            max,
            step,
            unit,
        } => {
            let v: i64 = text
                .parse()
                .map_err(|_| format!("{label} must be a whole number, got {text:?}"))?;
            let u = unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default();
            if let Some(m) = min {
                if v < *m {
                    return Err(format!("{label} must be at least {m}{u}, got {v}"));
                }
            }
            if let Some(m) = max {
                if v > *m {
                    return Err(format!("{label} must be at most {m}{u}, got {v}"));
                }
            }
            if let Some(s) = step.filter(|s| *s > 0) {
                let base = min.unwrap_or(0);
                if (v - base).rem_euclid(s) != 0 {
                    return Err(format!(
                        "{label} must be {base} plus a multiple of {s}, got {v}"
                    ));
                }
            }
            Ok(Value::Integer(v))
        }
        FieldKind::Number {
            min,
            max,
            step,
            unit,
        } => {
            let v: f64 = text
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("{label} must be a number, got {text:?}"))?;
            let u = unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default();
            if let Some(m) = min {
                if v < *m {
                    return Err(format!("{label} must be at least {m}{u}, got {v}"));
                }
            }
            if let Some(m) = max {
                if v > *m {
                    return Err(format!("{label} must be at most {m}{u}, got {v}"));
                }
            }
            if let Some(s) = step.filter(|s| *s > 0.0) {
                let k = (v - min.unwrap_or(0.0)) / s;
                if (k - k.round()).abs() > 1e-9 {
                    return Err(format!("{label} must be in steps of {s}, got {v}"));
                }
            }
            Ok(Value::Number(v))
        }
        FieldKind::Choice { choices } => {
            if choices.iter().any(|c| c.value == text) {
                Ok(Value::Text(text.to_string()))
            } else {
                let offered: Vec<&str> = choices.iter().map(|c| c.value.as_str()).collect();
                Err(format!(
                    "{label} {text:?} is not offered to you; choose one of {}",
                    offered.join(", ")
                ))
            }
        }
        FieldKind::Boolean => match text.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(Value::Boolean(true)),
            "false" | "off" | "no" | "0" => Ok(Value::Boolean(false)),
            _ => Err(format!("{label} must be true or false, got {text:?}")),
        },
    }
}

fn check_bound(field: &Field, b: &Bound, v: &Value) -> Result<(), String> {
    let label = &field.label;
    let n = match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    };
    if let Some(n) = n {
        if let Some(min) = b.min.filter(|m| n < *m) {
            return Err(format!(
                "{label} must be at least {min} in this profile, got {n}"
            ));
        }
        if let Some(max) = b.max.filter(|m| n > *m) {
            return Err(format!(
                "{label} must be at most {max} in this profile, got {n}"
            ));
        }
    }
    if !b.choices.is_empty() {
        let s = v.to_string();
        if !b.choices.contains(&s) {
            return Err(format!(
                "{label} {s:?} is not allowed in this profile; choose one of {}",
                b.choices.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Choice, Profile};

    fn schema() -> FormSchema {
        FormSchema {
            fields: vec![
                Field {
                    id: "partition".into(),
                    label: "Partition".into(),
                    help: String::new(),
                    default: Some("cpu".into()),
                    required: true,
                    kind: FieldKind::Choice {
                        choices: vec![
                            Choice {
                                value: "cpu".into(),
                                label: "CPU".into(),
                            },
                            Choice {
                                value: "gpu".into(),
                                label: "GPU".into(),
                            },
                        ],
                    },
                },
                Field {
                    id: "cores".into(),
                    label: "Cores".into(),
                    help: String::new(),
                    default: Some("1".into()),
                    required: true,
                    kind: FieldKind::Integer {
                        min: Some(1),
                        max: Some(32),
                        step: None,
                        unit: None,
                    },
                },
                Field {
                    id: "account".into(),
                    label: "Account".into(),
                    help: String::new(),
                    default: None,
                    required: false,
                    kind: FieldKind::Text {
                        max_length: Some(32),
                        pattern: Some("[a-z][a-z0-9_]*".into()),
                        placeholder: None,
                    },
                },
                Field {
                    id: "x11".into(),
                    label: "X11".into(),
                    help: String::new(),
                    default: None,
                    required: false,
                    kind: FieldKind::Boolean,
                },
            ],
            profiles: vec![],
        }
    }

    fn raw(pairs: &[(&str, &str)]) -> RawOptions {
        let mut r = RawOptions::new();
        for (k, v) in pairs {
            r.entry(k.to_string()).or_default().push(v.to_string());
        }
        r
    }

    #[test]
    fn defaults_and_types() {
        let o = check(&schema(), &raw(&[("cores", "4")])).unwrap();
        assert_eq!(o["partition"], Value::Text("cpu".into()));
        assert_eq!(o["cores"], Value::Integer(4));
        assert_eq!(o["x11"], Value::Boolean(false));
        assert!(!o.contains_key("account"));
    }

    #[test]
    fn hostile_values_are_refused_with_the_field_named() {
        let e = check(
            &schema(),
            &raw(&[
                ("cores", "4; rm -rf /"),
                ("partition", "$(id)"),
                ("account", "a\nb"),
                ("evil", "1"),
            ]),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["evil", "partition", "cores", "account"]);
        assert!(e[2].message.contains("whole number"));
        assert!(e[3].message.contains("control characters"));

        let e = check(&schema(), &raw(&[("account", "Bad-Name")])).unwrap_err();
        assert!(e[0].message.contains("expected form"));
        let e = check(&schema(), &raw(&[("cores", "64")])).unwrap_err();
        assert!(e[0].message.contains("at most 32"));
        let e = check(&schema(), &raw(&[("cores", "1"), ("cores", "2")])).unwrap_err();
        assert!(e[0].message.contains("one value"));
        let long = "a".repeat(MAX_VALUE_BYTES + 1);
        let e = check(&schema(), &raw(&[("account", &long)])).unwrap_err();
        assert!(e[0].message.contains("longer"));
    }

    #[test]
    fn profiles_fix_and_bound() {
        let mut s = schema();
        let mut fixed = Options::new();
        fixed.insert("partition".into(), Value::Text("gpu".into()));
        s.profiles = vec![
            Profile {
                id: "small".into(),
                label: "Small".into(),
                description: String::new(),
                fixed: Options::new(),
                bounds: vec![Bound {
                    field: "cores".into(),
                    min: None,
                    max: Some(4.0),
                    choices: vec![],
                }],
            },
            Profile {
                id: "gpu".into(),
                label: "GPU".into(),
                description: String::new(),
                fixed,
                bounds: vec![],
            },
        ];
        // Default profile is the first: its bound applies.
        let e = check(&s, &raw(&[("cores", "8")])).unwrap_err();
        assert!(e[0].message.contains("in this profile"));
        // The gpu profile fixes the partition whatever was sent.
        let o = check(
            &s,
            &raw(&[("profile", "gpu"), ("partition", "cpu"), ("cores", "8")]),
        )
        .unwrap();
        assert_eq!(o["partition"], Value::Text("gpu".into()));
        assert_eq!(o["profile"], Value::Text("gpu".into()));
        let e = check(&s, &raw(&[("profile", "huge")])).unwrap_err();
        assert_eq!(e[0].field, "profile");
    }

    #[test]
    fn a_profile_may_fix_a_field_the_site_turned_off() {
        let mut s = schema();
        let mut fixed = Options::new();
        fixed.insert("ngpus".into(), Value::Integer(1));
        fixed.insert("partition".into(), Value::Text("gpu".into()));
        s.profiles = vec![Profile {
            id: "quick".into(),
            label: "Quick".into(),
            description: String::new(),
            fixed,
            bounds: vec![],
        }];
        assert_eq!(check_schema(&s), Ok(()));
        let o = check(&s, &raw(&[])).unwrap();
        assert!(!o.contains_key("ngpus"), "{o:?}");
        // A field it does fix still passes the field's checks.
        s.profiles[0]
            .fixed
            .insert("partition".into(), Value::Text("nope".into()));
        assert!(check_schema(&s)
            .unwrap_err()
            .contains("profile `quick`, field `partition`"));
    }
}
