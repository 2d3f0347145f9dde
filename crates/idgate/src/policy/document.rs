//! Reading policy and groups files: JSON or YAML as gcloud prints them,
//! into one tree shape so both formats go through the same checks.

use std::path::Path;

use crate::strict_json::StrictValue;
use serde_json::{Map, Value};

use super::error::{BindingAt, MEMBER_FLAG_SOURCE, PolicyError};

/// The role each `--member` flag is bound to.
pub(super) const MEMBER_FLAG_ROLE: &str = "roles/run.invoker";

/// A binding whose shape checked out; its members and condition are not
/// interpreted yet (that depends on whether its role grants invoke).
#[derive(Debug, Clone)]
pub(super) struct BindingSpec {
    pub at: BindingAt,
    pub members: Vec<String>,
    pub condition: Option<ConditionSpec>,
}

/// A binding's `condition`, as written.
#[derive(Debug, Clone)]
pub(super) struct ConditionSpec {
    pub title: Option<String>,
    pub expression: String,
}

impl ConditionSpec {
    /// How a decision names the condition: its title, else its expression.
    pub fn name(&self) -> &str {
        match &self.title {
            Some(t) if !t.is_empty() => t,
            _ => &self.expression,
        }
    }
}

/// The bindings of one policy file, plus what is worth a warning.
#[derive(Debug, Default)]
pub(super) struct PolicyDocument {
    pub bindings: Vec<BindingSpec>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// Reads a file into a tree, refusing duplicate keys in either format.
///
/// The extension decides when it is `.json`, `.yaml` or `.yml`; otherwise
/// the content does (JSON if it parses as JSON, else YAML), which is what a
/// file saved from `gcloud … > policy` with no extension needs.
pub(super) fn read_tree(path: &Path, errors: &mut Vec<PolicyError>) -> Option<Value> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(source) => {
            errors.push(PolicyError::Read { file, source });
            return None;
        }
    };
    tree_from_text(path, file, &text, errors)
}

/// [`read_tree`] once the file is read: `path` names the format only.
fn tree_from_text(
    path: &Path,
    file: String,
    text: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Value> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("json") => Some(Format::Json),
        Some("yaml" | "yml") => Some(Format::Yaml),
        _ => None,
    };
    // Editors on Windows save a byte-order mark, which JSON parsers refuse.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match parse_tree(text, format) {
        Ok(v) => Some(v),
        Err(message) => {
            errors.push(PolicyError::Document { file, message });
            None
        }
    }
}

fn parse_tree(text: &str, format: Option<Format>) -> Result<Value, String> {
    let json = || {
        serde_json::from_str::<StrictValue>(text)
            .map(|v| v.0)
            .map_err(|e| format!("not valid JSON: {e}"))
    };
    let yaml = || {
        serde_yaml_ng::from_str::<StrictValue>(text)
            .map(|v| v.0)
            .map_err(|e| format!("not valid YAML: {e}"))
    };
    match format {
        Some(Format::Json) => json(),
        Some(Format::Yaml) => yaml(),
        None => json().or_else(|_| yaml()),
    }
}

/// Parses a policy file as gcloud prints it. Unknown top-level fields
/// (`auditConfigs`, …) are tolerated; anything inside a binding is checked
/// strictly, one error per problem.
pub(super) fn read_policy(path: &Path, errors: &mut Vec<PolicyError>) -> PolicyDocument {
    let file = file_label(path.display().to_string());
    let Some(tree) = read_tree(path, errors) else {
        return PolicyDocument::default();
    };
    policy_from_tree(&file, tree, errors)
}

/// How a file's bindings name it: its path as given, unless that reads as
/// the name of the `--member` flags' bindings (a file called `--member`),
/// which must not pass for them and skip the role check.
fn file_label(name: String) -> String {
    if name == MEMBER_FLAG_SOURCE {
        format!("./{name}")
    } else {
        name
    }
}

/// [`read_policy`] for a document already in memory, named `name` (whose
/// extension picks the format, as a file's does).
pub(super) fn policy_from_bytes(
    name: &str,
    bytes: &[u8],
    errors: &mut Vec<PolicyError>,
) -> PolicyDocument {
    let Ok(text) = std::str::from_utf8(bytes) else {
        errors.push(PolicyError::Document {
            file: name.to_owned(),
            message: "not UTF-8 text".into(),
        });
        return PolicyDocument::default();
    };
    match tree_from_text(Path::new(name), name.to_owned(), text, errors) {
        Some(tree) => policy_from_tree(&file_label(name.to_owned()), tree, errors),
        None => PolicyDocument::default(),
    }
}

pub(super) fn policy_from_tree(
    file: &str,
    tree: Value,
    errors: &mut Vec<PolicyError>,
) -> PolicyDocument {
    let mut doc = PolicyDocument::default();
    let doc_error = |message: String| PolicyError::Document {
        file: file.to_owned(),
        message,
    };
    let Value::Object(mut top) = tree else {
        errors.push(doc_error(format!(
            "expected an IAM policy (a mapping with `bindings`), found {}",
            kind_of(&tree)
        )));
        return doc;
    };
    let version = match top.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            errors.push(doc_error(format!(
                "version: expected an integer, found {}",
                kind_of(other)
            )));
            None
        }
    };
    match top.get("etag") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(other) => errors.push(doc_error(format!(
            "etag: expected a string, found {}",
            kind_of(other)
        ))),
    }
    let bindings = match top.remove("bindings") {
        // An empty policy prints as just its etag.
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(b)) => b,
        Some(other) => {
            errors.push(doc_error(format!(
                "bindings: expected a list, found {}",
                kind_of(&other)
            )));
            return doc;
        }
    };
    // A misspelt or wrapped `bindings` (`binding:`, `Bindings:`, the policy
    // under `policy:`) would otherwise load as a policy with no binding and
    // deny everyone, on a reload too.
    for key in top.keys() {
        if !matches!(key.as_str(), "version" | "etag" | "auditConfigs") {
            errors.push(doc_error(format!(
                "unknown field {key:?}: an IAM policy has bindings, etag, version and auditConfigs"
            )));
        }
    }
    let mut conditional = false;
    for (index, b) in bindings.into_iter().enumerate() {
        if let Some(spec) = binding_from_tree(file, index, b, errors) {
            conditional |= spec.condition.is_some();
            doc.bindings.push(spec);
        }
    }
    // IAM keeps conditions only in version 3 policies: a lower version with
    // conditions was edited by hand or fetched in a way that will not
    // round-trip, which deserves a look even though we can honour it.
    if conditional && version.is_some_and(|v| v < 3) {
        doc.warnings.push(format!(
            "{file}: policy version {} has conditional bindings; IAM only keeps conditions in version 3",
            version.unwrap_or_default()
        ));
    }
    doc
}

fn binding_from_tree(
    file: &str,
    index: usize,
    tree: Value,
    errors: &mut Vec<PolicyError>,
) -> Option<BindingSpec> {
    let role = match &tree {
        Value::Object(m) => match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => Some(r.clone()),
            _ => None,
        },
        _ => None,
    };
    let at = BindingAt {
        file: file.to_owned(),
        index,
        role: role.clone().unwrap_or_else(|| "<no role>".to_owned()),
    };
    // (field, message) pairs, turned into errors at the end so that every
    // problem of the binding is reported, not just the first.
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut fail = |field: &str, message: String| problems.push((field.to_owned(), message));
    let Value::Object(map) = tree else {
        errors.push(PolicyError::Binding {
            at,
            field: String::new(),
            message: format!("expected a binding (a mapping), found {}", kind_of(&tree)),
        });
        return None;
    };
    let mut role_checked = false;
    let mut members = Vec::new();
    let mut condition = None;
    let mut saw_members = false;
    for (key, value) in map {
        match key.as_str() {
            "role" => match &value {
                Value::String(r) if !r.is_empty() => role_checked = true,
                Value::String(_) => {
                    role_checked = true;
                    fail("role", "is empty".into())
                }
                other => {
                    role_checked = true;
                    fail(
                        "role",
                        format!("expected a string, found {}", kind_of(other)),
                    )
                }
            },
            "members" => {
                saw_members = true;
                match value {
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            match item {
                                Value::String(s) => members.push(s),
                                other => fail(
                                    &format!("members[{i}]"),
                                    format!("expected a string, found {}", kind_of(&other)),
                                ),
                            }
                        }
                    }
                    other => fail(
                        "members",
                        format!("expected a list, found {}", kind_of(&other)),
                    ),
                }
            }
            "condition" => match value {
                // Protobuf JSON would read null as "not set", but gcloud
                // never writes it: a `condition:` whose expression was
                // deleted or commented out would grant without it.
                Value::Null => fail(
                    "condition",
                    "is empty; remove the line for a binding without a condition".into(),
                ),
                Value::Object(c) => condition = condition_from_tree(c, &mut fail),
                other => fail(
                    "condition",
                    format!("expected a mapping, found {}", kind_of(&other)),
                ),
            },
            _ => fail(
                &key,
                "unknown field (a binding has role, members and condition)".into(),
            ),
        }
    }
    if !role_checked {
        fail("role", "missing".into());
    }
    if !saw_members {
        fail("members", "missing".into());
    }
    if problems.is_empty() {
        return Some(BindingSpec {
            at,
            members,
            condition,
        });
    }
    for (field, message) in problems {
        errors.push(PolicyError::Binding {
            at: at.clone(),
            field,
            message,
        });
    }
    None
}

fn condition_from_tree(
    map: Map<String, Value>,
    fail: &mut impl FnMut(&str, String),
) -> Option<ConditionSpec> {
    let mut title = None;
    let mut expression = None;
    let mut ok = true;
    for (key, value) in map {
        let field = format!("condition.{key}");
        let text = match value {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => {
                fail(
                    &field,
                    format!("expected a string, found {}", kind_of(&other)),
                );
                ok = false;
                continue;
            }
        };
        match key.as_str() {
            "title" => title = text,
            "expression" => expression = text,
            // The rest of google.type.Expr: informative only.
            "description" | "location" => {}
            _ => {
                fail(
                    &field,
                    "unknown field (a condition has title, description and expression)".into(),
                );
                ok = false;
            }
        }
    }
    match expression {
        Some(e) if !e.trim().is_empty() => ok.then_some(ConditionSpec {
            title,
            expression: e,
        }),
        Some(_) => {
            fail("condition.expression", "is empty".into());
            None
        }
        None => {
            fail("condition.expression", "missing".into());
            None
        }
    }
}

/// The bindings that `--member` flags stand for: each its own binding of
/// `roles/run.invoker`, unconditional, like `gcloud run services
/// add-iam-policy-binding --member`.
pub(super) fn member_flag_bindings(members: &[String]) -> Vec<BindingSpec> {
    members
        .iter()
        .enumerate()
        .map(|(index, m)| BindingSpec {
            at: BindingAt {
                file: MEMBER_FLAG_SOURCE.to_owned(),
                index,
                role: MEMBER_FLAG_ROLE.to_owned(),
            },
            members: vec![m.clone()],
            condition: None,
        })
        .collect()
}

/// A word for a value's type, for error messages.
pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Value, String> {
        parse_tree(text, None)
    }

    #[test]
    fn duplicate_keys_are_refused_in_both_formats() {
        let e = parse(r#"{"bindings":[{"role":"r","members":[],"members":["user:a@b"]}]}"#);
        assert!(e.is_err(), "{e:?}");
        let e = parse_tree("a: 1\na: 2\n", Some(Format::Yaml));
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn json_then_yaml_by_content() {
        assert_eq!(
            parse(r#"{"etag":"ACAB"}"#),
            Ok(serde_json::json!({"etag":"ACAB"}))
        );
        assert_eq!(
            parse("etag: ACAB\n"),
            Ok(serde_json::json!({"etag":"ACAB"}))
        );
    }

    #[test]
    fn binding_problems_are_all_reported() {
        let tree = serde_json::json!({
            "bindings": [
                {"role": "roles/run.invoker", "members": ["user:a@b.c", 7], "extra": 1},
                {"members": ["user:a@b.c"]},
                {"role": "roles/run.invoker", "members": "user:a@b.c"},
                {"role": "roles/run.invoker", "members": [], "condition": {"title": "t", "expresion": "true"}},
                {"role": "roles/run.invoker", "members": ["user:ok@b.c"]},
            ],
            "auditConfigs": [{"service": "allServices"}],
        });
        let mut errors = Vec::new();
        let doc = policy_from_tree("p.json", tree, &mut errors);
        assert_eq!(doc.bindings.len(), 1);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expected = [
            "p.json: bindings[0] (roles/run.invoker): members[1]: expected a string, found a number",
            "p.json: bindings[0] (roles/run.invoker): extra: unknown field",
            "p.json: bindings[1] (<no role>): role: missing",
            "p.json: bindings[2] (roles/run.invoker): members: expected a list, found a string",
            "p.json: bindings[3] (roles/run.invoker): condition.expresion: unknown field",
            "p.json: bindings[3] (roles/run.invoker): condition.expression: missing",
        ];
        for want in expected {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "missing {want:?} in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    }

    /// A misspelt or wrapped `bindings` is an error, not a policy with no
    /// binding (which would deny everyone, on a reload too).
    #[test]
    fn unknown_top_level_fields_are_refused() {
        let binding = serde_json::json!([{"role": "roles/run.invoker", "members": ["allUsers"]}]);
        for tree in [
            serde_json::json!({"binding": binding}),
            serde_json::json!({"Bindings": binding, "etag": "x"}),
            serde_json::json!({"policy": {"bindings": binding}}),
        ] {
            let mut errors = Vec::new();
            policy_from_tree("p.json", tree.clone(), &mut errors);
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(lines.len(), 1, "{tree}: {lines:#?}");
            assert!(lines[0].starts_with("p.json: unknown field"), "{lines:#?}");
        }
        let mut errors = Vec::new();
        let tree = serde_json::json!({"bindings": binding, "etag": "BwX", "version": 3, "auditConfigs": []});
        assert_eq!(
            policy_from_tree("p.json", tree, &mut errors).bindings.len(),
            1
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// A `condition:` emptied by hand (its expression deleted or commented
    /// out) reads as null: refused, not taken as no condition at all.
    #[test]
    fn an_empty_condition_is_refused() {
        let text = "bindings:\n- role: roles/run.invoker\n  members: [allUsers]\n  condition:\n  #  expression: request.path.startsWith(\"/public/\")\n";
        let tree = parse_tree(text, Some(Format::Yaml)).unwrap();
        let mut errors = Vec::new();
        let doc = policy_from_tree("p.yaml", tree, &mut errors);
        assert!(doc.bindings.is_empty());
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("p.yaml: bindings[0] (roles/run.invoker): condition: is empty"),
            "{lines:#?}"
        );
    }
}
