//! The digests that seal records into the provenance hash chain (`docs/format.md`,
//! "The hash chain").
//!
//! A record's digest is computed from the record as stored, every member of it (members
//! this program does not know included), with the `digest` member left out. Two schemes
//! exist, told apart by the digest's own form:
//!
//! - `blake3-jcs:HEX` (records written since store format 4): BLAKE3 of the record's
//!   canonical JSON, RFC 8785 (JSON Canonicalization Scheme): members sorted by the
//!   UTF-16 code units of their names, no whitespace, strings escaped only where JSON
//!   requires it. dtk records hold no fractional numbers and no integer beyond ±(2^53-1),
//!   so a number is written as its decimal integer; a record with any other number has
//!   no canonical form and is refused.
//! - bare 64 hex digits (records of store formats 2 and 3): BLAKE3 of the record's
//!   compact JSON with its members in the order they are stored.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::id::hex;
use crate::{Error, Result};

/// The prefix of digests in the canonical (RFC 8785) scheme.
pub const JCS_PREFIX: &str = "blake3-jcs:";

/// The largest integer a canonical record may hold (2^53 - 1, as RFC 8785 requires for
/// exact round trips through IEEE 754 doubles).
const MAX_SAFE: u64 = (1 << 53) - 1;

/// The RFC 8785 canonical form of `value`; an error names a number it cannot hold.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            let ok = n
                .as_u64()
                .filter(|u| *u <= MAX_SAFE)
                .map(|u| u.to_string())
                .or_else(|| {
                    n.as_i64()
                        .filter(|i| i.unsigned_abs() <= MAX_SAFE)
                        .map(|i| i.to_string())
                });
            match ok {
                Some(s) => out.extend_from_slice(s.as_bytes()),
                None => {
                    return Err(Error::corrupt(format!(
                    "the number {n} has no canonical form in a record (only integers up to 2^53-1)"
                )))
                }
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A JSON string as RFC 8785 (and ECMAScript's `JSON.stringify`) writes it.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// The digest a record in the canonical scheme carries: `blake3-jcs:HEX` of `record`
/// (serialized, its `digest` member removed).
pub fn seal<T: Serialize>(record: &T) -> Result<String> {
    let mut value = serde_json::to_value(record)
        .map_err(|e| Error::corrupt(format!("cannot serialize a record: {e}")))?;
    let members = object(&mut value)?;
    members.remove("digest");
    let bytes = canonical_json(&value)?;
    Ok(format!("{JCS_PREFIX}{}", blake3::hash(&bytes).to_hex()))
}

fn object(value: &mut Value) -> Result<&mut Map<String, Value>> {
    value
        .as_object_mut()
        .ok_or_else(|| Error::corrupt("a record is not a JSON object"))
}

/// What a stored record says its digest is, and what its content hashes to (in the scheme
/// its digest names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The `digest` member as stored (empty when there is none).
    pub recorded: String,
    /// The digest computed from every other member of the stored record.
    pub computed: String,
}

impl Sealed {
    /// True when the record's content matches its digest.
    pub fn is_intact(&self) -> bool {
        !self.recorded.is_empty() && self.recorded == self.computed
    }
}

/// Recompute the digest of the record stored as `bytes` (JSON), from every member it
/// holds. A record without a digest is computed in the canonical scheme.
pub fn check(bytes: &[u8]) -> Result<Sealed> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("a record is not valid JSON: {e}")))?;
    let members = object(&mut value)?;
    let recorded = match members.remove("digest") {
        None => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(Error::corrupt(format!(
                "a record's digest is not a string: {other}"
            )))
        }
    };
    let computed = if recorded.is_empty() || recorded.starts_with(JCS_PREFIX) {
        format!(
            "{JCS_PREFIX}{}",
            blake3::hash(&canonical_json(&value)?).to_hex()
        )
    } else {
        // Store formats 2 and 3: the compact JSON of the members in stored order.
        let bytes = serde_json::to_vec(&value)
            .map_err(|e| Error::corrupt(format!("cannot serialize a record: {e}")))?;
        hex(blake3::hash(&bytes).as_bytes())
    };
    Ok(Sealed { recorded, computed })
}

/// The input manifest digest of a run: `blake3:` and the BLAKE3 of the canonical JSON
/// (RFC 8785) of `{"node": NODE-ID, "run": RUN-ID, "inputs": [{"source", "version",
/// "digest"}, ...]}`, the inputs in the run record's order with their version records'
/// seals (`input_digests`). Everything in it is in the run record, so anyone holding the
/// record recomputes it; it is known before the run publishes, so an artifact can carry it
/// (a git commit's `Dkt-Manifest:` trailer), which the run's final seal cannot.
pub fn input_manifest(run: &crate::RunRecord) -> Result<String> {
    let inputs: Vec<Value> = run
        .inputs
        .iter()
        .enumerate()
        .map(|(i, sv)| {
            serde_json::json!({
                "source": sv.source.as_str(),
                "version": sv.version.to_string(),
                "digest": run.input_digests.get(i).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let value = serde_json::json!({
        "node": run.node.to_hex(),
        "run": run.id.to_hex(),
        "inputs": inputs,
    });
    Ok(format!(
        "blake3:{}",
        blake3::hash(&canonical_json(&value)?).to_hex()
    ))
}

/// `blake3:HEX` of `bytes`: the digest of a stored blob (a run's log).
pub fn blob(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(canonical_json(&v).unwrap()).unwrap()
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // RFC 8785 section 3.2.3: U+10000 (a surrogate pair, 0xD800...) sorts before
        // U+FB33 in UTF-16, after it in UTF-8 or by code point.
        let v = json!({"\u{fb33}": 1, "\u{10000}": 2, "b": 3, "a": [true, null, "x"]});
        assert_eq!(
            canon(v),
            "{\"a\":[true,null,\"x\"],\"b\":3,\"\u{10000}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn strings_escape_only_what_json_requires() {
        let v = json!({"s": "q\"b\\n\n\u{1}\u{7f}é\u{2028}"});
        assert_eq!(canon(v), "{\"s\":\"q\\\"b\\\\n\\n\\u0001\u{7f}é\u{2028}\"}");
    }

    #[test]
    fn numbers_beyond_two_to_the_53_are_refused() {
        assert_eq!(
            canon(json!({"n": 9007199254740991u64, "m": -3})),
            "{\"m\":-3,\"n\":9007199254740991}"
        );
        assert!(canonical_json(&json!({"n": 9007199254740992u64})).is_err());
        assert!(canonical_json(&json!({"n": 1.5})).is_err());
    }

    #[test]
    fn every_stored_member_is_covered() {
        let record = json!({"source": "data", "version": "md5:00", "digest": ""});
        let mut sealed = record.clone();
        sealed["digest"] = json!(seal(&record).unwrap());
        let bytes = serde_json::to_vec_pretty(&sealed).unwrap();
        assert!(check(&bytes).unwrap().is_intact());
        // A member the reader does not know is still part of the digest.
        let mut forged = sealed.clone();
        forged["note"] = json!("added by hand");
        assert!(!check(&serde_json::to_vec(&forged).unwrap())
            .unwrap()
            .is_intact());
        // Member order and whitespace carry no meaning.
        let reordered = format!(
            "{{ \"digest\": {}, \"version\": \"md5:00\", \"source\": \"data\" }}",
            sealed["digest"]
        );
        assert!(check(reordered.as_bytes()).unwrap().is_intact());
    }

    /// The test vector of docs/format.md ("The hash chain"), computed independently
    /// (Python's `rfc8785` and `blake3` packages).
    #[test]
    fn the_documented_test_vector() {
        let record = crate::VersionRecord {
            source: crate::Name::new("tests").unwrap(),
            version: "md5:d41d8cd98f00b204e9800998ecf8427e".parse().unwrap(),
            recorded_ms: None,
            seq: None,
            run: Some(
                "6c1f0b9e3a5d7c2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a0b2c4d6e8f0a1b3c5d7e"
                    .parse()
                    .unwrap(),
            ),
            node: Some(
                "02da6ad3dcc37108aa5b585f0812bffd56b6990bdb47e2c2dd7e039d4e0fde8c"
                    .parse()
                    .unwrap(),
            ),
            inputs: vec![crate::SourceVersion {
                source: crate::Name::new("dmg").unwrap(),
                version: "md5:0e500a4eb2a162f8098575daced142e1".parse().unwrap(),
            }],
            extra: [
                ("BUILD".to_owned(), "2246".to_owned()),
                ("NOTE".to_owned(), "caf\u{e9} \"ok\"\n".to_owned()),
            ]
            .into(),
            run_digest: Some(
                "blake3-jcs:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
                    .to_owned(),
            ),
            origin: Some(crate::Origin {
                kind: "path".into(),
                location: "/home/me/results".into(),
                tag: None,
                path: None,
            }),
            digest: None,
        };
        let canonical = r#"{"extra":{"BUILD":"2246","NOTE":"café \"ok\"\n"},"inputs":[{"source":"dmg","version":"md5:0e500a4eb2a162f8098575daced142e1"}],"node":"02da6ad3dcc37108aa5b585f0812bffd56b6990bdb47e2c2dd7e039d4e0fde8c","origin":{"kind":"path","location":"/home/me/results"},"run":"6c1f0b9e3a5d7c2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a0b2c4d6e8f0a1b3c5d7e","run_digest":"blake3-jcs:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","source":"tests","version":"md5:d41d8cd98f00b204e9800998ecf8427e"}"#;
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&value).unwrap()).unwrap(),
            canonical
        );
        let digest = "blake3-jcs:540b55511efca5dd26cc58fa0e347ad138861e99f867e54723896d1485d7da8a";
        assert_eq!(seal(&record).unwrap(), digest);
        let docs = include_str!("../../docs/format.md");
        assert!(
            docs.contains(canonical) && docs.contains(digest),
            "docs/format.md shows the vector"
        );
    }

    #[test]
    fn legacy_digests_cover_members_in_stored_order() {
        let compact = br#"{"source":"data","version":"md5:00"}"#;
        let digest = hex(blake3::hash(compact).as_bytes());
        let stored = format!(
            "{{\n  \"source\": \"data\",\n  \"version\": \"md5:00\",\n  \"digest\": \"{digest}\"\n}}\n"
        );
        assert!(check(stored.as_bytes()).unwrap().is_intact());
        let forged = stored.replace("\"version\"", "\"extra\": {},\n  \"version\"");
        assert!(!check(forged.as_bytes()).unwrap().is_intact());
    }
}
