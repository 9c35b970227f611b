//! What of a message body may be kept for operators: a dead letter is read by people, so it
//! must not carry a password. Pure functions over bytes; this module must never log what it
//! is given.

use std::borrow::Cow;

/// A body as it may be kept for operators: every `"password"` field of a JSON object is
/// replaced by `"***"`, and an unreadable body that mentions a password is dropped whole.
pub fn redact_secrets(body: &[u8]) -> Cow<'_, [u8]> {
    const FIELD: &[u8] = b"password";
    if !body
        .windows(FIELD.len())
        .any(|w| w.eq_ignore_ascii_case(FIELD))
    {
        return Cow::Borrowed(body);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            redact_value(&mut value);
            Cow::Owned(value.to_string().into_bytes())
        }
        Err(_) => {
            Cow::Owned(b"\"(redacted: an unreadable body that mentioned a password)\"".to_vec())
        }
    }
}

fn redact_value(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if key.eq_ignore_ascii_case("password") {
                    *field = serde_json::Value::String("***".into());
                } else {
                    redact_value(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_replaced_at_any_depth() {
        let body = br#"{"email":"a@b.c","password":"hunter2","nested":[{"Password":"x"}]}"#;
        let redacted = redact_secrets(body);
        let text = std::str::from_utf8(&redacted).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("\"x\""),
            "{text}"
        );
        assert!(text.contains("a@b.c"));
    }

    #[test]
    fn unreadable_bodies_that_mention_a_password_are_dropped_and_others_kept() {
        assert!(
            !String::from_utf8_lossy(&redact_secrets(b"{password: hunter2")).contains("hunter2")
        );
        assert_eq!(&*redact_secrets(b"{not json"), b"{not json");
    }
}
