//! A JWS header or payload read as the verifier needs it: a JSON object
//! refused if any object in it, at any depth, has a duplicate member (as
//! [`crate::strict_json`] refuses), and kept as its top-level members only,
//! each string as its place in the decoded text. Every token that misses the
//! cache is read this way, so it builds no map and copies no string that
//! the text spells without escapes.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;

use crate::strict_json::{DUPLICATE_KEY, StrictValue};

/// Why a segment's text is not a JSON object idgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentError {
    /// Not JSON (or a number no finite float holds).
    Invalid,
    /// JSON, but an object somewhere in it names a member twice.
    Duplicate,
    /// JSON, but not an object.
    NotObject,
}

/// A string of a segment: where its text spells it byte for byte, or a copy
/// when the text spells it with escapes.
#[derive(Clone)]
pub(crate) enum Text {
    /// `json[start..end]`, cut at the string's own boundaries.
    At { start: u32, end: u32 },
    /// The string as its escapes decode.
    Copy(Box<str>),
}

impl Text {
    /// `s` as serde_json lent it: a slice of `json` when it is one.
    fn of(json: &[u8], s: &str) -> Text {
        let start = (s.as_ptr() as usize).wrapping_sub(json.as_ptr() as usize);
        let end = start.checked_add(s.len()).filter(|&end| end <= json.len());
        match (u32::try_from(start), end.map(u32::try_from)) {
            (Ok(start), Some(Ok(end))) => Text::At { start, end },
            _ => Text::Copy(s.into()),
        }
    }

    /// The string's bytes. A place is read against its own segment's text
    /// only; were it read against another, out of range, it reads as empty
    /// rather than panic.
    fn bytes<'s>(&'s self, json: &'s [u8]) -> &'s [u8] {
        match self {
            Text::At { start, end } => json.get(*start as usize..*end as usize).unwrap_or_default(),
            Text::Copy(s) => s.as_bytes(),
        }
    }

    /// The string. An `At` was cut from a `&str` at its boundaries, so the
    /// check never fails; were it to, the string reads as empty, which no
    /// claim the verifier requires accepts.
    pub(crate) fn str<'s>(&'s self, json: &'s [u8]) -> &'s str {
        std::str::from_utf8(self.bytes(json)).unwrap_or_default()
    }
}

/// A member's value as kept: scalars and arrays whole, objects only checked.
#[derive(Clone)]
pub(crate) enum Field {
    Null,
    Bool(bool),
    Number(Number),
    String(Text),
    Array(Vec<Field>),
    /// An object below the top level: no claim idgate reads is one, so it is
    /// checked for duplicates and not kept.
    Object,
}

/// One JWS segment, decoded: its JSON text and its top-level members.
#[derive(Clone)]
pub struct Segment {
    json: Vec<u8>,
    members: Vec<(Text, Field)>,
}

/// A member's value, read from its segment. Objects below the top level
/// are not kept; [`Segment::to_map`] has them.
#[derive(Clone, Copy)]
pub enum Json<'s> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(&'s Number),
    /// A string, its escapes decoded.
    String(&'s str),
    /// An array.
    Array(Items<'s>),
    /// An object.
    Object,
}

/// The items of an array member.
#[derive(Clone, Copy)]
pub struct Items<'s> {
    json: &'s [u8],
    fields: &'s [Field],
}

impl<'s> Items<'s> {
    /// How many items.
    pub fn len(&self) -> usize {
        self.fields.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
    /// The items in order.
    pub fn iter(&self) -> impl Iterator<Item = Json<'s>> + 's {
        let json = self.json;
        self.fields.iter().map(move |f| Json::of(json, f))
    }
}

impl<'s> Json<'s> {
    fn of(json: &'s [u8], field: &'s Field) -> Json<'s> {
        match field {
            Field::Null => Json::Null,
            Field::Bool(b) => Json::Bool(*b),
            Field::Number(n) => Json::Number(n),
            Field::String(t) => Json::String(t.str(json)),
            Field::Array(fields) => Json::Array(Items { json, fields }),
            Field::Object => Json::Object,
        }
    }

    /// The string, if this is one.
    pub fn as_str(self) -> Option<&'s str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

/// As JSON text (an object below the top level as `{…}`): what a
/// rejection quotes.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::String(s) => f.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            other => write!(f, "{other:?}"),
        }
    }
}

impl fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => write!(f, "{n}"),
            Json::String(s) => write!(f, "{s:?}"),
            Json::Array(items) => f.debug_list().entries(items.iter()).finish(),
            Json::Object => f.write_str("{…}"),
        }
    }
}

impl Segment {
    /// Read `json` (a decoded segment).
    pub(crate) fn parse(json: Vec<u8>) -> Result<Segment, SegmentError> {
        let members = {
            let mut de = serde_json::Deserializer::from_slice(&json);
            let top = TopSeed { json: &json }
                .deserialize(&mut de)
                .and_then(|top| de.end().map(|()| top));
            match top {
                Ok(Some(members)) => members,
                Ok(None) => return Err(SegmentError::NotObject),
                Err(e) if e.to_string().starts_with(DUPLICATE_KEY) => {
                    return Err(SegmentError::Duplicate);
                }
                Err(_) => return Err(SegmentError::Invalid),
            }
        };
        Ok(Segment { json, members })
    }

    /// The member `name`'s value.
    pub fn get(&self, name: &str) -> Option<Json<'_>> {
        self.field(name).map(|f| Json::of(&self.json, f))
    }

    /// The member `name`, if it is a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Json::as_str)
    }

    /// The members' names, in the order the text has them.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members().map(|(name, _)| name)
    }

    /// The members, names and values, in the order the text has them.
    pub fn members(&self) -> impl Iterator<Item = (&str, Json<'_>)> {
        self.members
            .iter()
            .map(|(k, v)| (k.str(&self.json), Json::of(&self.json, v)))
    }

    /// The whole object, nested objects included, as a map: for tools;
    /// the verifier reads members with [`Segment::get`].
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::from_slice::<StrictValue>(&self.json) {
            Ok(StrictValue(Value::Object(m))) => m,
            // The segment was read from this text, and the two readers
            // accept the same texts (a property test holds them to it).
            _ => {
                debug_assert!(false, "a segment's text the strict tree refuses");
                Map::new()
            }
        }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&Field> {
        self.members
            .iter()
            .find(|(k, _)| k.bytes(&self.json) == name.as_bytes())
            .map(|(_, f)| f)
    }

    pub(crate) fn into_json(self) -> Vec<u8> {
        self.json
    }
}

/// The segment's value: `Some(members)` for an object, `None` for any other
/// JSON value (checked all the same, so that a duplicate anywhere is
/// reported as one).
struct TopSeed<'j> {
    json: &'j [u8],
}

impl<'de> DeserializeSeed<'de> for TopSeed<'de> {
    type Value = Option<Vec<(Text, Field)>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FieldVisitor { json: self.json })
            .map(|field| match field {
                Kept::Members(m) => Some(m),
                Kept::Field(_) => None,
            })
    }
}

/// What a value is read into: objects keep their members, so that the top
/// level can have them; below it they become [`Field::Object`].
enum Kept {
    Field(Field),
    Members(Vec<(Text, Field)>),
}

impl Kept {
    fn field(self) -> Field {
        match self {
            Kept::Field(f) => f,
            Kept::Members(_) => Field::Object,
        }
    }
}

struct FieldSeed<'j> {
    json: &'j [u8],
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'de> {
    type Value = Field;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(FieldVisitor { json: self.json })
            .map(Kept::field)
    }
}

/// A member's name: a string, lent from the text where it can be.
struct KeySeed<'j> {
    json: &'j [u8],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'de> {
    type Value = Text;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Text, D::Error> {
        match d.deserialize_str(FieldVisitor { json: self.json })? {
            Kept::Field(Field::String(t)) => Ok(t),
            // JSON's names are strings; a guard, should a reader lend
            // anything else.
            _ => Err(de::Error::custom("a member's name is not a string")),
        }
    }
}

struct FieldVisitor<'j> {
    json: &'j [u8],
}

impl<'de> Visitor<'de> for FieldVisitor<'de> {
    type Value = Kept;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Kept, E> {
        Ok(Kept::Field(Field::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Kept, E> {
        Ok(Kept::Field(Field::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Kept, E> {
        Ok(Kept::Field(Field::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kept, E> {
        // serde_json refuses non-finite numbers itself; as the strict tree
        // does, refuse them here too rather than rely on it.
        Number::from_f64(v)
            .map(|n| Kept::Field(Field::Number(n)))
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Kept, E> {
        Ok(Kept::Field(Field::String(Text::of(self.json, v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Kept, E> {
        Ok(Kept::Field(Field::String(Text::Copy(v.into()))))
    }
    fn visit_unit<E>(self) -> Result<Kept, E> {
        Ok(Kept::Field(Field::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kept, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(FieldSeed { json: self.json })? {
            items.push(item);
        }
        Ok(Kept::Field(Field::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kept, A::Error> {
        let json = self.json;
        let mut members = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed { json })? {
            members.push((key, map.next_value_seed(FieldSeed { json })?));
        }
        // Sorted names side by side: a duplicate is a pair of neighbours,
        // found in O(n log n) comparisons of names, whatever their number.
        let duplicate = {
            let mut names: SmallVec<[&[u8]; 16]> =
                members.iter().map(|(k, _)| k.bytes(json)).collect();
            names.sort_unstable();
            names.windows(2).any(|w| w[0] == w[1])
        };
        if duplicate {
            return Err(de::Error::custom(DUPLICATE_KEY));
        }
        Ok(Kept::Members(members))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Segment, SegmentError> {
        Segment::parse(s.as_bytes().to_vec())
    }

    #[test]
    fn keeps_top_level_members_as_places_in_the_text() {
        let s = parse(r#"{"iss":"i","n":1.5,"b":true,"z":null,"a":["x",{"k":1}],"o":{"p":[]}}"#)
            .unwrap();
        assert!(matches!(
            s.field("iss"),
            Some(Field::String(Text::At { .. }))
        ));
        assert_eq!(s.str("iss"), Some("i"));
        assert!(matches!(s.get("n"), Some(Json::Number(n)) if n.as_f64() == Some(1.5)));
        assert!(matches!(s.get("b"), Some(Json::Bool(true))));
        assert!(matches!(s.get("z"), Some(Json::Null)));
        assert!(matches!(s.get("o"), Some(Json::Object)));
        let Some(Json::Array(items)) = s.get("a") else {
            panic!("a is an array")
        };
        assert_eq!(
            format!("{:?}", items.iter().collect::<Vec<_>>()),
            r#"["x", {…}]"#
        );
        assert!(
            s.get("k").is_none(),
            "a nested member is not a top-level one"
        );
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["iss", "n", "b", "z", "a", "o"]
        );
        assert_eq!(s.to_map()["o"], serde_json::json!({"p": []}));
    }

    #[test]
    fn a_string_outside_the_text_is_a_copy() {
        let json = br#"{"a":"xy"}"#;
        let inside = std::str::from_utf8(&json[6..8]).unwrap();
        assert!(matches!(
            Text::of(json, inside),
            Text::At { start: 6, end: 8 }
        ));
        let last = std::str::from_utf8(&json[9..]).unwrap();
        assert!(matches!(
            Text::of(json, last),
            Text::At { start: 9, end: 10 }
        ));
        let elsewhere = String::from("xy");
        assert!(matches!(Text::of(json, &elsewhere), Text::Copy(s) if &*s == "xy"));
        assert!(
            matches!(Text::of(&json[..7], inside), Text::Copy(_)),
            "runs past the end"
        );
    }

    #[test]
    fn escaped_strings_and_names_are_copies_that_decode() {
        let s = parse(r#"{"s\u0075b":"\u00e9x","e":"a\/b"}"#).unwrap();
        assert!(matches!(s.field("sub"), Some(Field::String(Text::Copy(_)))));
        assert_eq!(s.str("sub"), Some("éx"));
        assert_eq!(s.str("e"), Some("a/b"));
        // Names compare decoded: an escaped spelling is the same member.
        assert_eq!(
            parse(r#"{"a":1,"\u0061":2}"#).err(),
            Some(SegmentError::Duplicate)
        );
    }

    #[test]
    fn refuses_duplicates_non_objects_and_bad_json() {
        for dup in [
            r#"{"a":1,"a":1}"#,
            r#"{"x":{"b":1,"b":2}}"#,
            r#"{"x":[{"c":1,"c":2}]}"#,
            r#"[{"c":1,"c":2}]"#,
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"a":18}"#,
        ] {
            assert_eq!(parse(dup).err(), Some(SegmentError::Duplicate), "{dup}");
        }
        for not_object in ["[]", "1", r#""s""#, "null", "[1,[2]]"] {
            assert_eq!(
                parse(not_object).err(),
                Some(SegmentError::NotObject),
                "{not_object}"
            );
        }
        for invalid in [
            "",
            "{",
            r#"{"a":1}x"#,
            r#"{"a":1e999}"#,
            "{1:2}",
            "\u{feff}{}",
            r#"{"a":"\ud800"}"#,
        ] {
            assert_eq!(
                parse(invalid).err(),
                Some(SegmentError::Invalid),
                "{invalid}"
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse(&deep).err(),
            Some(SegmentError::Invalid),
            "nesting is bounded"
        );
    }

    proptest::proptest! {
        // About a quarter of the texts are objects, one in six has a
        // duplicate; the rest are other JSON, or not JSON.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// The segment accepts what the strict tree accepts, its top-level
        /// members say what the tree's do, and it reports a duplicate only
        /// where the tree does; on text and on bytes that are not UTF-8.
        #[test]
        fn agrees_with_the_strict_tree(
            json in json_text(),
            noise in proptest::option::weighted(0.15, (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>())),
        ) {
            let mut bytes = json.into_bytes();
            if let Some((at, byte)) = noise {
                bytes.insert(at.index(bytes.len() + 1), byte);
            }
            let tree = serde_json::from_slice::<StrictValue>(&bytes);
            let segment = Segment::parse(bytes.clone());
            match (&tree, &segment) {
                (Ok(StrictValue(Value::Object(m))), Ok(s)) => {
                    let mut names: Vec<&str> = s.names().collect();
                    names.sort_unstable();
                    let mut want: Vec<&str> = m.keys().map(String::as_str).collect();
                    want.sort_unstable();
                    proptest::prop_assert_eq!(names, want);
                    for (k, v) in m {
                        proptest::prop_assert_eq!(Some(value(s.get(k).unwrap())), Some(shallow(v)));
                    }
                    proptest::prop_assert_eq!(&s.to_map(), m);
                }
                (Ok(StrictValue(v)), Err(SegmentError::NotObject)) => proptest::prop_assert!(!v.is_object()),
                (Err(e), Err(SegmentError::Duplicate)) => proptest::prop_assert!(e.to_string().starts_with(DUPLICATE_KEY)),
                // The tree stops at a duplicate's second name, the segment
                // at the end of its object: text that is also broken after
                // the duplicate reads as not JSON here. Either is refused,
                // and "not JSON" is true: a reader that allows duplicates
                // refuses it too.
                (Err(_), Err(SegmentError::Invalid)) => {
                    proptest::prop_assert!(serde_json::from_slice::<Value>(&bytes).is_err());
                }
                _ => proptest::prop_assert!(false, "tree {:?}, segment {:?}", tree.as_ref().map(|v| &v.0).map_err(ToString::to_string), segment.as_ref().err()),
            }
        }
    }

    /// `v` with objects below the top level reduced to `{}`: what a segment keeps.
    fn shallow(v: &Value) -> Value {
        match v {
            Value::Array(a) => Value::Array(a.iter().map(shallow).collect()),
            Value::Object(_) => Value::Object(Map::new()),
            other => other.clone(),
        }
    }

    fn value(j: Json<'_>) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.into()),
            Json::Array(items) => Value::Array(items.iter().map(value).collect()),
            Json::Object => Value::Object(Map::new()),
        }
    }

    /// JSON-like text: objects of a few short names (duplicates likely, and
    /// the claims the verifier reads), escapes, numbers of every shape, and
    /// some text that is not JSON; an object at the top level half the time.
    pub(crate) fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("\\u0061".to_string()),
            Just("iss".to_string()),
            Just("sub".to_string()),
            Just("aud".to_string()),
            Just("email".to_string()),
            Just("hd".to_string()),
            Just("email_verified".to_string()),
            Just("exp".to_string()),
            "[a-c]{0,3}",
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-0".to_string()),
            Just("1.5e3".to_string()),
            Just("1e999".to_string()),
            Just("18446744073709551616".to_string()),
            Just("-9223372036854775809".to_string()),
            Just(r#""\u00e9\/\n""#.to_string()),
            Just(r#""\ud83d\ude00""#.to_string()),
            "-?[0-9]{1,20}",
            "\"[a-z ]{0,8}\"",
        ];
        // Now and then a leaf that is not JSON (most are not).
        let leaf = prop_oneof![30 => leaf, 1 => "[\\[\\]{}:,\"a-z0-9]{0,6}"];
        let object = |members: Vec<(String, String)>| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        };
        let inner_name = name.clone();
        let value = leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((inner_name.clone(), inner), 0..6).prop_map(object),
            ]
        });
        prop_oneof![
            value.clone(),
            proptest::collection::vec((name, value), 0..8).prop_map(object),
        ]
    }
}
