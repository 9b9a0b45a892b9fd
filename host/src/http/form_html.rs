//! The options form as an HTML fragment the hub can show as its
//! `options_form`. Every value from the plugin is HTML-escaped; the field
//! names are the schema's field ids, so the posted form data is exactly the
//! raw options (field → list of strings) the host validates.

use std::fmt::Write;

use crate::model::{FieldKind, FormSchema};

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn render(schema: &FormSchema) -> String {
    let mut h = String::from("<div class=\"wasmspawner-form\">\n");
    if !schema.profiles.is_empty() {
        h.push_str("<div class=\"form-group\">\n<label for=\"ws-profile\">Profile</label>\n<select class=\"form-control\" id=\"ws-profile\" name=\"profile\">\n");
        for (i, p) in schema.profiles.iter().enumerate() {
            let _ = writeln!(
                h,
                "<option value=\"{}\"{}>{}</option>",
                escape(&p.id),
                if i == 0 { " selected" } else { "" },
                escape(&if p.description.is_empty() {
                    p.label.clone()
                } else {
                    format!("{} — {}", p.label, p.description)
                })
            );
        }
        h.push_str("</select>\n</div>\n");
    }
    for f in &schema.fields {
        let id = escape(&f.id);
        let dom_id = format!("ws-{id}");
        let default = f.default.as_deref().unwrap_or("");
        let required = if f.required { " required" } else { "" };
        h.push_str("<div class=\"form-group\">\n");
        let label = format!("<label for=\"{dom_id}\">{}</label>\n", escape(&f.label));
        match &f.kind {
            FieldKind::Boolean => {
                let checked = matches!(
                    default.to_ascii_lowercase().as_str(),
                    "true" | "on" | "yes" | "1"
                );
                let _ = writeln!(
                    h,
                    "<div class=\"form-check\"><input class=\"form-check-input\" type=\"checkbox\" id=\"{dom_id}\" name=\"{id}\" value=\"true\"{}> {}</div>",
                    if checked { " checked" } else { "" },
                    label.trim_end()
                );
            }
            FieldKind::Choice { choices } => {
                h.push_str(&label);
                let _ = writeln!(
                    h,
                    "<select class=\"form-control\" id=\"{dom_id}\" name=\"{id}\"{required}>"
                );
                for c in choices {
                    let _ = writeln!(
                        h,
                        "<option value=\"{}\"{}>{}</option>",
                        escape(&c.value),
                        if c.value == default { " selected" } else { "" },
                        escape(&c.label)
                    );
                }
                h.push_str("</select>\n");
            }
            FieldKind::Text {
                max_length,
                pattern,
                placeholder,
            } => {
                h.push_str(&label);
                let mut attrs = String::new();
                if let Some(m) = max_length {
                    let _ = write!(attrs, " maxlength=\"{m}\"");
                }
                if let Some(p) = pattern {
                    let _ = write!(attrs, " pattern=\"{}\"", escape(p));
                }
                if let Some(p) = placeholder {
                    let _ = write!(attrs, " placeholder=\"{}\"", escape(p));
                }
                let _ = writeln!(
                    h,
                    "<input class=\"form-control\" type=\"text\" id=\"{dom_id}\" name=\"{id}\" value=\"{}\"{attrs}{required}>",
                    escape(default)
                );
            }
            FieldKind::Integer {
                min,
                max,
                step,
                unit,
            } => {
                h.push_str(&label);
                let mut attrs = String::new();
                for (k, v) in [("min", min), ("max", max), ("step", step)] {
                    if let Some(v) = v {
                        let _ = write!(attrs, " {k}=\"{v}\"");
                    }
                }
                let _ = writeln!(
                    h,
                    "<input class=\"form-control\" type=\"number\" id=\"{dom_id}\" name=\"{id}\" value=\"{}\"{attrs}{required}>{}",
                    escape(default),
                    unit.as_deref().map(|u| format!(" <span class=\"unit\">{}</span>", escape(u))).unwrap_or_default()
                );
            }
            FieldKind::Number {
                min,
                max,
                step,
                unit,
            } => {
                h.push_str(&label);
                let mut attrs = String::new();
                for (k, v) in [("min", min), ("max", max), ("step", step)] {
                    if let Some(v) = v {
                        let _ = write!(attrs, " {k}=\"{v}\"");
                    }
                }
                if step.is_none() {
                    attrs.push_str(" step=\"any\"");
                }
                let _ = writeln!(
                    h,
                    "<input class=\"form-control\" type=\"number\" id=\"{dom_id}\" name=\"{id}\" value=\"{}\"{attrs}{required}>{}",
                    escape(default),
                    unit.as_deref().map(|u| format!(" <span class=\"unit\">{}</span>", escape(u))).unwrap_or_default()
                );
            }
        }
        if !f.help.is_empty() {
            let _ = writeln!(
                h,
                "<small class=\"form-text text-muted\">{}</small>",
                escape(&f.help)
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</div>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Choice, Field};

    #[test]
    fn values_are_escaped_and_names_are_field_ids() {
        let schema = FormSchema {
            fields: vec![
                Field {
                    id: "partition".into(),
                    label: "Partition <b>".into(),
                    help: "\"quoted\" & 'single'".into(),
                    default: Some("gpu".into()),
                    required: true,
                    kind: FieldKind::Choice {
                        choices: vec![
                            Choice {
                                value: "cpu".into(),
                                label: "CPU".into(),
                            },
                            Choice {
                                value: "gpu".into(),
                                label: "<script>alert(1)</script>".into(),
                            },
                        ],
                    },
                },
                Field {
                    id: "debug".into(),
                    label: "Debug".into(),
                    help: String::new(),
                    default: Some("true".into()),
                    required: false,
                    kind: FieldKind::Boolean,
                },
            ],
            profiles: vec![],
        };
        let h = render(&schema);
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(h.contains("Partition &lt;b&gt;"), "{h}");
        assert!(
            h.contains("&quot;quoted&quot; &amp; &#39;single&#39;"),
            "{h}"
        );
        assert!(h.contains("name=\"partition\""), "{h}");
        assert!(h.contains("<option value=\"gpu\" selected>"), "{h}");
        assert!(h.contains("name=\"debug\" value=\"true\" checked"), "{h}");
    }
}
