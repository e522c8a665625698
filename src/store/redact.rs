//! Error texts of the shared backends' drivers with the connection URL's credentials cut out:
//! a driver may quote (part of) the URL it could not use, and the URL may hold a password.

/// `text` with the URL's user information (`user:password@`) cut out, wherever it appears.
pub(in crate::store) fn redact(url: &str, text: &str) -> String {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return text.to_string();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return text.to_string();
    };
    let mut redacted = text.replace(userinfo, "***");
    if let Some((_, password)) = userinfo.split_once(':') {
        if !password.is_empty() {
            redacted = redacted.replace(password, "***");
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_the_password_wherever_it_is_quoted() {
        let url = "mongodb://gorgon:s3cr%2Fet@db1:27017,db2/app?replicaSet=rs0";
        let text = format!("bad option in {url}; password s3cr%2Fet");
        let clean = redact(url, &text);
        assert!(!clean.contains("s3cr"), "{clean}");
        assert!(clean.contains("db1:27017"), "{clean}");
        assert_eq!(redact("mongodb://db1/app", "x"), "x");
    }
}
