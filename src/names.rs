//! Names from the LAN are text we show to people: a file name with a newline could forge a log
//! line, an escape sequence could repaint the console, a bidi override could make
//! `invoice<U+202E>fdp.exe` read as `invoiceexe.pdf`. Such characters are refused in new names by
//! default (`[sftp] allow_control_characters`), and escaped wherever a name is shown.
//!
//! A leaf: pure functions on text, used wherever a name is checked or shown.

use std::borrow::Cow;

/// Whether `c` may not be shown as it is: C0 and C1 control characters (ESC included), DEL,
/// and the bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
pub fn is_hostile(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The first character of `name` that [`is_hostile`], if any.
pub fn hostile_char(name: &str) -> Option<char> {
    name.chars().find(|c| is_hostile(*c))
}

/// `name` with every hostile character written as `\u{XX}` (unchanged and not copied when it
/// has none).
pub fn escaped(name: &str) -> Cow<'_, str> {
    if hostile_char(name).is_none() {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if is_hostile(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One log line as the log writer gets it (one event, ending with `\n`): every hostile
/// character escaped, a newline inside it too, so that a name cannot start a line of its own.
pub fn escaped_line(text: &str) -> Cow<'_, str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    match escaped(body) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(mut line) => {
            if text.ends_with('\n') {
                line.push('\n');
            }
            Cow::Owned(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_escapes_and_bidi_overrides_are_hostile_and_escaped() {
        for bad in [
            "a\nb",
            "a\rb",
            "\u{1b}[2J",
            "x\u{7f}",
            "\u{85}",
            "invoice\u{202e}fdp.exe",
            "\u{2066}x",
        ] {
            assert!(hostile_char(bad).is_some(), "{bad:?}");
            let shown = escaped(bad);
            assert!(hostile_char(&shown).is_none(), "{shown:?}");
        }
        assert_eq!(escaped("a\nb"), "a\\u{a}b");
        assert_eq!(escaped("x\u{202e}y"), "x\\u{202e}y");
        for good in ["plain.txt", "Straße/über ☃.pdf", "tab\u{a0}nbsp", "日本語"] {
            assert_eq!(hostile_char(good), None, "{good:?}");
            assert!(matches!(escaped(good), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn a_name_cannot_add_a_log_line() {
        let line = "INFO sealed path=/a\nERROR forged line\n";
        let shown = escaped_line(line);
        assert_eq!(shown, "INFO sealed path=/a\\u{a}ERROR forged line\n");
        assert!(matches!(escaped_line("plain\n"), Cow::Borrowed("plain\n")));
        let injected = "INFO sealed path=/a\u{1b}[31mred\n";
        assert_eq!(
            escaped_line(injected),
            "INFO sealed path=/a\\u{1b}[31mred\n"
        );
    }
}
