//! Putting a user name or a DN into a search filter (RFC 4515) without letting it change the
//! filter's structure.
//!
//! Values are escaped conservatively: every byte that is not an ASCII letter, digit, `-`, `_`,
//! `.` or `@` becomes `\XX`. RFC 4515 only requires `*`, `(`, `)`, `\` and NUL to be escaped, but
//! escaping any octet is allowed and means the same to the server; escaping more keeps
//! non-ASCII, control characters and spaces from ever being read as anything but data.

use std::fmt::Write as _;

/// `value` escaped for the assertion value of a search filter.
pub(crate) fn filter_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() + 8);
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'@') {
            escaped.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(escaped, "\\{byte:02x}");
        }
    }
    escaped
}

/// A filter with one placeholder (`{user}` or `{dn}`), checked when the settings are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTemplate {
    template: String,
    placeholder: &'static str,
}

impl FilterTemplate {
    /// Checks that `template` holds `placeholder` (and no other `{...}`) and that it is a valid
    /// filter once filled.
    pub(crate) fn new(template: &str, placeholder: &'static str) -> Result<FilterTemplate, String> {
        let template = template.trim();
        if !template.contains(placeholder) {
            return Err(format!("`{template}` has no {placeholder}: where does the name go?"));
        }
        let without = template.replace(placeholder, "");
        if let Some(start) = without.find('{') {
            let rest = &without[start..];
            let end = rest.find('}').map_or(rest.len(), |i| i + 1);
            return Err(format!(
                "`{template}` holds `{}`: the only placeholder here is {placeholder}",
                &rest[..end]
            ));
        }
        if !(template.starts_with('(') && template.ends_with(')')) {
            return Err(format!(
                "`{template}` is not a filter: it must be enclosed in parentheses"
            ));
        }
        let filter = FilterTemplate {
            template: template.to_string(),
            placeholder,
        };
        if ldap3::parse_filter(filter.fill("x")).is_err() {
            return Err(format!("`{template}` is not a valid LDAP filter (RFC 4515)"));
        }
        Ok(filter)
    }

    /// The filter with every placeholder replaced by `value`, escaped.
    pub(crate) fn fill(&self, value: &str) -> String {
        self.template.replace(self.placeholder, &filter_value(value))
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The attribute compared for equality with the first placeholder, as in `(uid={user})`:
    /// the entry's value of it is the user's name as the directory spells it.
    pub(crate) fn equality_attribute(&self) -> Option<&str> {
        let position = self.template.find(self.placeholder)?;
        if !self.template[position + self.placeholder.len()..].starts_with(')') {
            return None;
        }
        let before = self.template[..position].strip_suffix('=')?;
        let start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ';' || c == '.'))
            .map_or(0, |i| i + 1);
        let attribute = &before[start..];
        // `(cn:dn:={user})` and similar are extensible matches, not equality.
        let valid = before[..start].ends_with('(') && !attribute.is_empty();
        valid.then_some(attribute)
    }
}

/// Whether `name` is a plain attribute description (`cn`, `memberOf`, `member;range=0-*` is not).
pub(crate) fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_specials_are_escaped() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*"), "\\2a");
        assert_eq!(filter_value("alice)(uid=*"), "alice\\29\\28uid\\3d\\2a");
        assert_eq!(filter_value("a\\b"), "a\\5cb");
        assert_eq!(filter_value("a\0b"), "a\\00b");
        assert_eq!(filter_value("zoë"), "zo\\c3\\ab");
        assert_eq!(filter_value("a b"), "a\\20b");
        assert_eq!(filter_value("first.last@example.org"), "first.last@example.org");
    }

    #[test]
    fn escaped_values_never_change_the_filter_structure() {
        let template = FilterTemplate::new("(&(objectClass=person)(uid={user}))", "{user}").unwrap();
        for hostile in [
            "*",
            "alice)(uid=*",
            "alice)(|(uid=*",
            "\\",
            "\0",
            "x)(objectClass=*))(&(uid=x",
            ")",
        ] {
            let filter = template.fill(hostile);
            assert!(ldap3::parse_filter(&filter).is_ok(), "{filter}");
            let inner = &filter["(&(objectClass=person)(uid=".len()..filter.len() - 2];
            assert!(!inner.contains(['(', ')', '*']), "{filter}");
        }
    }

    #[test]
    fn templates_are_checked() {
        let error = FilterTemplate::new("(uid=alice)", "{user}").unwrap_err();
        assert!(error.contains("has no {user}"), "{error}");
        let error = FilterTemplate::new("(uid={username})", "{user}").unwrap_err();
        assert!(error.contains("has no {user}"), "{error}");
        let error = FilterTemplate::new("(&(uid={user})(mail={mail}))", "{user}").unwrap_err();
        assert!(error.contains("`{mail}`"), "{error}");
        let error = FilterTemplate::new("uid={user}", "{user}").unwrap_err();
        assert!(error.contains("parentheses"), "{error}");
        let error = FilterTemplate::new("(&(uid={user})", "{user}").unwrap_err();
        assert!(error.contains("not a valid LDAP filter"), "{error}");
        let filter = FilterTemplate::new(" (|(member={dn})(uniqueMember={dn})) ", "{dn}").unwrap();
        assert_eq!(
            filter.fill("cn=a (b),dc=x"),
            "(|(member=cn\\3da\\20\\28b\\29\\2cdc\\3dx)(uniqueMember=cn\\3da\\20\\28b\\29\\2cdc\\3dx))"
        );
    }

    #[test]
    fn the_equality_attribute_names_the_user() {
        let attribute = |t: &str| {
            FilterTemplate::new(t, "{user}")
                .unwrap()
                .equality_attribute()
                .map(str::to_string)
        };
        assert_eq!(attribute("(uid={user})").as_deref(), Some("uid"));
        assert_eq!(
            attribute("(&(objectClass=user)(sAMAccountName={user}))").as_deref(),
            Some("sAMAccountName")
        );
        assert_eq!(attribute("(|(uid={user})(mail={user}))").as_deref(), Some("uid"));
        assert_eq!(attribute("(uid={user}*)"), None);
        assert_eq!(attribute("(uid=x{user})"), None);
        assert_eq!(attribute("(uid~={user})"), None);
        assert_eq!(attribute("(cn:dn:={user})"), None);
    }

    #[test]
    fn attribute_names() {
        assert!(is_attribute_name("cn"));
        assert!(is_attribute_name("memberOf"));
        assert!(is_attribute_name("x-custom-1"));
        assert!(!is_attribute_name(""));
        assert!(!is_attribute_name("1cn"));
        assert!(!is_attribute_name("cn)(x"));
        assert!(!is_attribute_name("member;range=0-*"));
    }
}
