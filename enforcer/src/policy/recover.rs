//! Every error of a policy file, not only the first: `enforcer policy check` lists them all.
//!
//! serde stops at the first error. This pass reads the document once more as a tree (keeping
//! duplicate keys apart, each reported), then deserializes the same type the policy is read
//! into, again and again: each time an error is found, it is recorded and the node it is about
//! is taken out of the tree (an unknown key, a bad value, a mapping that misses a required key),
//! until what is left deserializes. Nothing here names a policy key: what is an error is the
//! types' business (`RawPolicy` and whatever it holds), so a new key needs no edit here.
//!
//! Positions: the tree is written back to YAML for each attempt (serde_yaml reads scalars
//! from text differently than from a `Value`: `version: 3` is a string only from text), so an
//! error's position is looked up in the original text by its path there, `Removed` mapping the
//! indices of the shrunk sequences back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde_yaml::{Mapping, Value};

use super::PolicyError;
use super::error::{self, Step};

/// At most this many errors are collected (each costs a parse of the document).
pub const MAX_ERRORS: usize = 100;

/// What [`recover`] kept, and the errors of what it took out.
pub(super) struct Recovered<T> {
    pub raw: T,
    pub errors: Vec<PolicyError>,
    pub removed: Removed,
}

/// Stand-ins for a required value that was taken out (its mapping cannot be read without one),
/// after the alternatives serde's message named: one of them deserializes as most types.
fn stand_ins() -> Vec<Value> {
    vec![
        Value::String("-".to_owned()),
        Value::Number(0.into()),
        Value::Bool(false),
        Value::Sequence(Vec::new()),
        Value::Mapping(Mapping::new()),
    ]
}

/// The nodes taken out of the tree, by their paths in the original text.
#[derive(Default)]
pub(super) struct Removed {
    /// (sequence, index of the element taken out).
    elements: Vec<(Vec<Step>, usize)>,
    /// (mapping, key taken out).
    keys: Vec<(Vec<Step>, String)>,
    /// Values put in for a required key that was taken out: errors about them, or under them,
    /// are not the file's.
    pub stand_ins: Vec<Vec<Step>>,
}

impl Removed {
    /// The original indices of the elements left in the sequence at `seq` (`len` of them).
    pub fn survivors(&self, seq: &[Step], len: usize) -> Vec<usize> {
        (0..).filter(|i| !self.gone(seq, *i)).take(len).collect()
    }

    /// Whether a node at or under `prefix` was taken out.
    pub fn touched(&self, prefix: &[Step]) -> bool {
        self.elements.iter().any(|(p, _)| p.starts_with(prefix))
            || self.keys.iter().any(|(p, k)| {
                p.starts_with(prefix)
                    || (prefix.len() == p.len() + 1
                        && prefix.starts_with(p)
                        && matches!(prefix.last(), Some(Step::Key(key, _)) if key == k))
            })
    }

    fn gone(&self, seq: &[Step], index: usize) -> bool {
        self.elements.iter().any(|(p, i)| p == seq && *i == index)
    }

    /// The path in the original text of the node at `path` of the shrunk tree.
    fn original(&self, path: &[Step]) -> Vec<Step> {
        let mut out: Vec<Step> = Vec::new();
        for step in path {
            let step = match step {
                Step::Index(i) => Step::Index(self.survivors(&out, i + 1)[*i]),
                key => key.clone(),
            };
            out.push(step);
        }
        out
    }
}

/// Reads `text` (whose typed parse failed with `first`) into `T`, recording every error on the
/// way. `Err` holds the errors when nothing could be kept (a syntax error, a broken top level).
pub(super) fn recover<T: DeserializeOwned>(
    text: &str,
    file: &str,
    first: PolicyError,
) -> Result<Recovered<T>, Vec<PolicyError>> {
    let dups = RefCell::new(Vec::new());
    let seed = Tree {
        path: Vec::new(),
        dups: &dups,
    };
    let Ok(mut tree) = seed.deserialize(serde_yaml::Deserializer::from_str(text)) else {
        return Err(vec![first]); // not a tree (syntax): the first error is the only one known
    };
    // serde's own first error says it best (`mode:` is "an empty value", which the tree
    // written back reads as 'null'): it stands for the pass's error at the same key.
    let mut first_key = match &first {
        PolicyError::Invalid { key, .. } => key.clone(),
        PolicyError::Io { .. } => None,
    };
    let mut errors = vec![first];
    for (map, key, nth) in dups.into_inner() {
        let e = duplicate(text, file, map, key, nth);
        if let PolicyError::Invalid { key: Some(k), .. } = &e
            && first_key.as_ref() == Some(k)
        {
            first_key = None;
            continue;
        }
        errors.push(e);
    }
    let mut removed = Removed::default();
    // (mapping, key) -> stand-ins left to try, for keys taken out.
    let mut left: HashMap<(Vec<Step>, String), Vec<Value>> = HashMap::new();
    for _ in 0..MAX_ERRORS * 16 {
        let yaml = serde_yaml::to_string(&tree).unwrap_or_default();
        let de = serde_yaml::Deserializer::from_str(&yaml);
        let err = match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(raw) => {
                return Ok(Recovered {
                    raw,
                    errors,
                    removed,
                });
            }
            Err(err) => err,
        };
        let path = error::steps(err.path());
        let inner = err.into_inner();
        let orig = removed.original(&path);
        let message = inner.to_string();
        // A key this pass took out is missing now: a consequence, not the file's error. Put in
        // a stand-in, if one is left to try.
        let missing = message
            .split("missing field `")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .filter(|k| removed.keys.contains(&(orig.clone(), (*k).to_owned())));
        if let Some(key) = missing {
            let stand_in = left
                .get_mut(&(orig.clone(), key.to_owned()))
                .and_then(Vec::pop);
            if let Some(value) = stand_in
                && let Some(Value::Mapping(m)) = node_mut(&mut tree, &path)
            {
                m.insert(Value::String(key.to_owned()), value);
                let mut at = orig;
                at.push(Step::Key(key.to_owned(), 0));
                removed.stand_ins.push(at);
                continue;
            }
        }
        let ours = removed.stand_ins.iter().any(|s| orig.starts_with(s));
        if missing.is_none() && !ours {
            let at = match message.contains("unknown field `") {
                true => error::locate_key(text, &orig),
                false => error::locate(text, &orig),
            };
            let e = error::convert(&path, &orig, &inner, at, file, text);
            match &e {
                PolicyError::Invalid { key: Some(k), .. } if first_key.as_ref() == Some(k) => {
                    first_key = None
                }
                _ => errors.push(e),
            }
        }
        // The node to take out is the error's: the unknown key, the bad value, or the mapping
        // that misses a key.
        let target = path;
        if target.is_empty() || errors.len() >= MAX_ERRORS || !take_out(&mut tree, &target) {
            return Err(errors);
        }
        let parent = removed.original(&target[..target.len() - 1]);
        match &target[target.len() - 1] {
            Step::Index(i) => {
                let orig_index = removed.survivors(&parent, i + 1)[*i];
                removed.elements.push((parent, orig_index));
            }
            Step::Key(k, _) => {
                let slot = (parent, k.clone());
                if !removed.keys.contains(&slot) {
                    // The alternatives serde named (`expected `allow`, `deny` or `audit``) first.
                    let mut tries = stand_ins();
                    let named = message.rsplit("expected ").next().unwrap_or("");
                    for alt in named.split('`').skip(1).step_by(2) {
                        tries.push(Value::String(alt.to_owned()));
                    }
                    left.insert(slot.clone(), tries);
                    removed.keys.push(slot);
                }
            }
        }
    }
    Err(errors)
}

fn node_mut<'v>(tree: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    let mut node = tree;
    for step in path {
        node = match (step, node) {
            (Step::Key(k, _), Value::Mapping(m)) => m.get_mut(k.as_str())?,
            (Step::Index(i), Value::Sequence(s)) => s.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Removes the node at `path`; false if there is none.
fn take_out(tree: &mut Value, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    match (last, node_mut(tree, parents)) {
        (Step::Key(k, _), Some(Value::Mapping(m))) => m.shift_remove(k.as_str()).is_some(),
        (Step::Index(i), Some(Value::Sequence(s))) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// The error the typed parse gives for the `nth` (1-based) repetition of `key` in `map`.
fn duplicate(text: &str, file: &str, map: Vec<Step>, key: String, nth: usize) -> PolicyError {
    let mut at = map.clone();
    at.push(Step::Key(key.clone(), nth));
    let position = error::locate(text, &at);
    let what = format!("duplicate key '{}'", error::show(&key));
    at.pop();
    at.push(Step::Key(key, 0));
    PolicyError::Invalid {
        file: file.to_owned(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        key: Some(error::render(&at)),
        message: match map.is_empty() {
            true => what,
            false => format!("{}: {what}", error::render(&map)),
        },
    }
}

/// Reads a document into a `Value`, keeping the first of repeated keys and recording the others
/// as (mapping, key, repetition), where `Value`'s own reader would stop at the first.
struct Tree<'a> {
    path: Vec<Step>,
    dups: &'a RefCell<Vec<(Vec<Step>, String, usize)>>,
}

impl Tree<'_> {
    fn at(&self, step: Step) -> Self {
        let mut path = self.path.clone();
        path.push(step);
        Tree {
            path,
            dups: self.dups,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Tree<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML node")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.at(Step::Index(out.len())))? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Mapping::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        while let Some(key) = map.next_key_seed(self.at(Step::Index(0)))? {
            let name = match &key {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let nth = seen.entry(name.clone()).or_insert(0);
            if *nth > 0 {
                self.dups.borrow_mut().push((self.path.clone(), name, *nth));
                *nth += 1;
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            *nth += 1;
            let value = map.next_value_seed(self.at(Step::Key(name, 0)))?;
            out.insert(key, value);
        }
        Ok(Value::Mapping(out))
    }
}
