//! The groups file: Google Groups membership, which ID tokens do not carry.
//!
//! A mapping from each group's email to its members, YAML or JSON:
//!
//! ```yaml
//! eng@example.com:
//!   - user:alice@example.com
//!   - serviceAccount:ci@proj.iam.gserviceaccount.com
//!   - group:sre@example.com        # nested groups are allowed
//! sre@example.com:
//!   - user:bob@example.com
//! ```
//!
//! Keys may also be written `group:eng@example.com`. Groups are flattened at
//! load, so a decision looks a caller up once, whatever the nesting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::document::{kind_of, read_tree};
use super::error::PolicyError;
use super::member::{Member, email, parse_group_member};

/// Everyone in a group, nested groups included.
#[derive(Debug, Default, Clone)]
pub(super) struct Flat {
    pub users: BTreeSet<String>,
    pub service_accounts: BTreeSet<String>,
}

/// The groups file, flattened.
#[derive(Debug, Default)]
pub(super) struct Groups {
    pub file: String,
    pub flat: HashMap<String, Flat>,
}

#[derive(Debug, Default)]
struct Direct {
    users: BTreeSet<String>,
    service_accounts: BTreeSet<String>,
    groups: BTreeSet<String>,
}

/// Reads and flattens a groups file. Returns `None` when it has errors
/// (pushed to `errors`), including cycles.
pub(super) fn load(
    path: &Path,
    errors: &mut Vec<PolicyError>,
    warnings: &mut Vec<String>,
) -> Option<Groups> {
    let file = path.display().to_string();
    let tree = read_tree(path, errors)?;
    from_tree(file, tree, errors, warnings)
}

pub(super) fn from_tree(
    file: String,
    tree: Value,
    errors: &mut Vec<PolicyError>,
    warnings: &mut Vec<String>,
) -> Option<Groups> {
    let before = errors.len();
    let group_error = |group: &str, message: String| PolicyError::Group {
        file: file.clone(),
        group: group.to_owned(),
        message,
    };
    let map = match tree {
        Value::Object(m) => m,
        // An empty file is more often one being written, or a generator
        // that failed, than a wish for no groups (`{}` says that): taken as
        // no groups, a reload would turn away everyone a group admits.
        Value::Null => {
            errors.push(PolicyError::Document {
                file: file.clone(),
                message: "the file is empty; write {} for no groups".into(),
            });
            return None;
        }
        other => {
            errors.push(PolicyError::Document {
                file: file.clone(),
                message: format!(
                    "expected a mapping of group emails to member lists, found {}",
                    kind_of(&other)
                ),
            });
            return None;
        }
    };
    let mut direct: BTreeMap<String, Direct> = BTreeMap::new();
    for (key, members) in map {
        let name = match email(key.strip_prefix("group:").unwrap_or(&key)) {
            Ok(n) => n,
            Err(m) => {
                errors.push(group_error(&key, m));
                continue;
            }
        };
        // Checked after the members, so that theirs are reported too.
        let twice = direct.contains_key(&name);
        if twice {
            errors.push(group_error(
                &key,
                "defined twice (group emails compare case-insensitively)".into(),
            ));
        }
        let Value::Array(items) = members else {
            errors.push(group_error(
                &key,
                format!("expected a list of members, found {}", kind_of(&members)),
            ));
            continue;
        };
        let mut entry = Direct::default();
        for item in items {
            let Value::String(raw) = item else {
                errors.push(group_error(
                    &key,
                    format!("expected a member string, found {}", kind_of(&item)),
                ));
                continue;
            };
            match parse_group_member(&raw) {
                Ok(parsed) => {
                    if let Some(w) = parsed.warning {
                        warnings.push(format!("{file}: group {key:?}: member {raw:?} {w}"));
                    }
                    match parsed.member {
                        Member::User(e) => entry.users.insert(e),
                        Member::ServiceAccount(e) => entry.service_accounts.insert(e),
                        Member::Group(g) => entry.groups.insert(g),
                        // parse_group_member admits nothing else.
                        _ => false,
                    };
                }
                Err(m) => errors.push(group_error(&key, format!("member {raw:?}: {m}"))),
            }
        }
        if !twice {
            direct.insert(name, entry);
        }
    }
    let flat = flatten(&file, &direct, errors, warnings);
    (errors.len() == before).then_some(Groups { file, flat })
}

/// Flattens nested groups, depth first without recursion (a long chain of
/// nested groups must not overflow the stack), reporting each cycle once.
fn flatten(
    file: &str,
    direct: &BTreeMap<String, Direct>,
    errors: &mut Vec<PolicyError>,
    warnings: &mut Vec<String>,
) -> HashMap<String, Flat> {
    #[derive(PartialEq)]
    enum State {
        OnPath,
        Done,
    }
    let mut state: HashMap<&str, State> = HashMap::new();
    let mut flat: HashMap<String, Flat> = HashMap::new();
    let mut cycles_seen: HashSet<Vec<String>> = HashSet::new();
    let mut undefined_seen: HashSet<(&str, &str)> = HashSet::new();

    for root in direct.keys() {
        if state.contains_key(root.as_str()) {
            continue;
        }
        // (group, its nested groups still to visit)
        let mut path: Vec<(&str, std::collections::btree_set::Iter<'_, String>)> = Vec::new();
        state.insert(root, State::OnPath);
        path.push((root, direct[root].groups.iter()));
        while let Some((node, children)) = path.last_mut() {
            let node: &str = node;
            if let Some(child) = children.next() {
                let child = child.as_str();
                if !direct.contains_key(child) {
                    if undefined_seen.insert((node, child)) {
                        warnings.push(format!(
                            "{file}: group {node:?}: member \"group:{child}\" is not defined in the groups file, so it adds no one"
                        ));
                    }
                    continue;
                }
                match state.get(child) {
                    Some(State::Done) => {}
                    Some(State::OnPath) => {
                        let start = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().map(|(n, _)| (*n).to_owned()).collect();
                        // One report per cycle, whichever group it was
                        // entered from.
                        let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                        cycle.rotate_left(min);
                        if cycles_seen.insert(cycle.clone()) {
                            let first = cycle[0].clone();
                            cycle.push(first);
                            errors.push(PolicyError::GroupCycle {
                                file: file.to_owned(),
                                cycle,
                            });
                        }
                    }
                    None => {
                        state.insert(child, State::OnPath);
                        path.push((child, direct[child].groups.iter()));
                    }
                }
                continue;
            }
            // Every nested group of `node` is done: its set is theirs
            // plus its own.
            let d = &direct[node];
            let mut f = Flat {
                users: d.users.clone(),
                service_accounts: d.service_accounts.clone(),
            };
            for g in &d.groups {
                if let Some(sub) = flat.get(g) {
                    f.users.extend(sub.users.iter().cloned());
                    f.service_accounts
                        .extend(sub.service_accounts.iter().cloned());
                }
            }
            flat.insert(node.to_owned(), f);
            state.insert(node, State::Done);
            path.pop();
        }
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(tree: Value) -> (Option<Groups>, Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let g = from_tree("groups.yaml".into(), tree, &mut errors, &mut warnings);
        (
            g,
            errors.iter().map(ToString::to_string).collect(),
            warnings,
        )
    }

    #[test]
    fn an_empty_file_is_refused_and_an_empty_map_is_no_groups() {
        let (g, errors, _) = run(Value::Null);
        assert!(g.is_none());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("the file is empty"), "{errors:?}");
        let (g, errors, _) = run(json!({}));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(g.unwrap().flat.is_empty());
    }

    #[test]
    fn nested_groups_flatten() {
        let (g, errors, warnings) = run(json!({
            "Eng@x.com": ["user:Alice@x.com", "group:sre@x.com", "group:nobody@x.com"],
            "group:sre@x.com": ["user:bob@x.com", "serviceAccount:ci@p.iam.gserviceaccount.com", "group:oncall@x.com"],
            "oncall@x.com": ["user:carol@x.com"],
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let g = g.unwrap_or_default();
        let eng = &g.flat["eng@x.com"];
        assert_eq!(
            eng.users.iter().map(String::as_str).collect::<Vec<_>>(),
            ["alice@x.com", "bob@x.com", "carol@x.com"]
        );
        assert!(
            eng.service_accounts
                .contains("ci@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn cycles_are_refused_once_each() {
        let (g, errors, _) = run(json!({
            "a@x.com": ["group:b@x.com"],
            "b@x.com": ["group:c@x.com"],
            "c@x.com": ["group:a@x.com", "user:u@x.com"],
            "d@x.com": ["group:b@x.com"],
            "self@x.com": ["group:self@x.com"],
        }));
        assert!(g.is_none());
        assert_eq!(
            errors,
            [
                "groups.yaml: group cycle: a@x.com -> b@x.com -> c@x.com -> a@x.com",
                "groups.yaml: group cycle: self@x.com -> self@x.com",
            ]
        );
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let (g, errors, _) = run(json!({
            "a@x.com": ["domain:x.com", "user:", 3],
            "A@X.com": [],
            "not-an-email": [],
            "b@x.com": "user:a@x.com",
        }));
        assert!(g.is_none());
        assert_eq!(errors.len(), 6, "{errors:#?}");
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let mut m = serde_json::Map::new();
        for i in 0..20_000 {
            m.insert(
                format!("g{i}@x.com"),
                json!([format!("group:g{}@x.com", i + 1)]),
            );
        }
        m.insert("g20000@x.com".into(), json!(["user:deep@x.com"]));
        let (g, errors, _) = run(Value::Object(m));
        assert!(errors.is_empty());
        assert!(
            g.unwrap_or_default().flat["g0@x.com"]
                .users
                .contains("deep@x.com")
        );
    }
}
