//! Subject, reply subject and queue group name validation.
//!
//! A subject is a non-empty sequence of non-empty tokens separated by `.`.
//! In a subscription a token may be the wildcard `*` (any one token) and
//! the last token may be `>` (one or more tokens). As in nats-server, `*`
//! and `>` are wildcards only as whole tokens: `a*` is a literal token.
//! Whitespace and other ASCII control characters are never allowed (they
//! would break the line framing or be invisible in logs), and subjects must
//! be UTF-8 so that every layer above can treat them as strings.

use crate::error::SubjectError;

/// Checks a literal subject, as used to publish (`PUB`, `HPUB`, `MSG`,
/// `HMSG`) and as a reply subject: no wildcard token.
pub fn validate_publish_subject(subject: &[u8]) -> Result<(), SubjectError> {
    validate(subject, false)
}

/// Checks a subscription subject (`SUB`): `*` tokens anywhere, a `>` token
/// only last.
pub fn validate_subscribe_subject(subject: &[u8]) -> Result<(), SubjectError> {
    validate(subject, true)
}

/// Checks a queue group name: non-empty UTF-8 without whitespace or control
/// characters (dots and wildcard characters are just characters here).
pub fn validate_queue(queue: &[u8]) -> Result<(), SubjectError> {
    if queue.is_empty() {
        return Err(SubjectError::Empty);
    }
    check_chars(queue)
}

fn check_chars(bytes: &[u8]) -> Result<(), SubjectError> {
    if bytes.iter().any(|b| b.is_ascii_control() || *b == b' ') {
        return Err(SubjectError::BadCharacter);
    }
    std::str::from_utf8(bytes).map(drop).map_err(|_| SubjectError::NotUtf8)
}

fn validate(subject: &[u8], wildcards: bool) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    check_chars(subject)?;
    let mut tokens = subject.split(|&b| b == b'.').peekable();
    while let Some(token) = tokens.next() {
        match token {
            [] => return Err(SubjectError::EmptyToken),
            b"*" | b">" if !wildcards => return Err(SubjectError::Wildcard),
            b">" if tokens.peek().is_some() => return Err(SubjectError::FullWildcardNotLast),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_subjects() {
        for ok in ["a", "foo.bar", "_INBOX.abc.1", "a*.b>", "ü.ñ", "a-b_c.d~e"] {
            assert_eq!(validate_publish_subject(ok.as_bytes()), Ok(()), "{ok}");
        }
        let cases: &[(&[u8], SubjectError)] = &[
            (b"", SubjectError::Empty),
            (b"a..b", SubjectError::EmptyToken),
            (b".a", SubjectError::EmptyToken),
            (b"a.", SubjectError::EmptyToken),
            (b".", SubjectError::EmptyToken),
            (b"a b", SubjectError::BadCharacter),
            (b"a\tb", SubjectError::BadCharacter),
            (b"a\r", SubjectError::BadCharacter),
            (b"a\n", SubjectError::BadCharacter),
            (b"a\x00", SubjectError::BadCharacter),
            (b"a.\xff", SubjectError::NotUtf8),
            (b"a.*", SubjectError::Wildcard),
            (b">", SubjectError::Wildcard),
            (b"*.a", SubjectError::Wildcard),
        ];
        for (subject, err) in cases {
            assert_eq!(validate_publish_subject(subject), Err(*err), "{subject:?}");
        }
    }

    #[test]
    fn subscribe_subjects() {
        for ok in ["a", "*", ">", "a.*.c", "a.>", "*.*.>", "a*.b>.c"] {
            assert_eq!(validate_subscribe_subject(ok.as_bytes()), Ok(()), "{ok}");
        }
        let cases: &[(&[u8], SubjectError)] = &[
            (b"", SubjectError::Empty),
            (b"a..*", SubjectError::EmptyToken),
            (b"a.>.b", SubjectError::FullWildcardNotLast),
            (b">.>", SubjectError::FullWildcardNotLast),
            (b"a b", SubjectError::BadCharacter),
            (b"\xc3", SubjectError::NotUtf8),
        ];
        for (subject, err) in cases {
            assert_eq!(validate_subscribe_subject(subject), Err(*err), "{subject:?}");
        }
    }

    #[test]
    fn queues() {
        assert_eq!(validate_queue(b"workers.v1*"), Ok(()));
        assert_eq!(validate_queue(b""), Err(SubjectError::Empty));
        assert_eq!(validate_queue(b"a b"), Err(SubjectError::BadCharacter));
        assert_eq!(validate_queue(b"\xff"), Err(SubjectError::NotUtf8));
    }
}
