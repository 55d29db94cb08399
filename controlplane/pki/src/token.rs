//! Tokens: `<id>.<secret>`, 16 and 64 lowercase hex digits. The id names
//! the stored record (and is safe to show and log); the secret is stored
//! only as its SHA-256. A secret of 256 random bits needs no slow hash: no
//! dictionary reaches it.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::PkiError;

const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: String,
}

impl Token {
    pub fn generate() -> Token {
        let id: [u8; ID_HEX / 2] = rand::random();
        let secret: [u8; SECRET_HEX / 2] = rand::random();
        Token {
            id: hex::encode(id),
            secret: hex::encode(secret),
        }
    }

    /// Parses a token as a user pastes it (surrounding blanks ignored).
    pub fn parse(text: &str) -> Result<Token, PkiError> {
        let (id, secret) = text
            .trim()
            .split_once('.')
            .ok_or(PkiError::Token("a token is <id>.<secret>"))?;
        let hex_of = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex_of(id, ID_HEX) || !hex_of(secret, SECRET_HEX) {
            return Err(PkiError::Token(
                "a token is 16 and 64 lowercase hex digits joined by a dot",
            ));
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What is stored: the SHA-256 of the secret, hex.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether the secret is the one whose hash was stored. Compares
    /// without an early exit.
    pub fn matches(&self, stored_hash: &str) -> bool {
        let ours = self.secret_hash();
        ours.len() == stored_hash.len()
            && ours
                .bytes()
                .zip(stored_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The whole token, to hand to its holder once.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// Never prints the secret.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.…)", self.id)
    }
}

/// Whether a text is a token id (what the API takes to delete one).
pub fn is_token_id(text: &str) -> bool {
    text.len() == ID_HEX
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_match_only_their_hash() {
        let t = Token::generate();
        let again = Token::parse(&format!("  {}\n", t.reveal())).unwrap();
        assert_eq!(again, t);
        assert!(t.matches(&t.secret_hash()));
        assert!(!Token::generate().matches(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
        assert!(is_token_id(&t.id));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = Token::generate().reveal();
        for bad in [
            "",
            "abc",
            &t.replace('.', ""),
            &t.to_uppercase(),
            &format!("{t}0"),
            &format!("x{}", &t[1..]),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }
}
