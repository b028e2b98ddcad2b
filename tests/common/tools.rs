//! External tools some tests need (promtool, groff, man, make): missing,
//! the test is skipped with a reason, unless DISTLINK_REQUIRE_TOOLS=1
//! (CI sets it), which makes it fail.

use std::process::Command;

/// Whether `tool` is on PATH; `package` is the Debian package that has it.
pub fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("DISTLINK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "DISTLINK_REQUIRE_TOOLS=1 but {tool} is missing (Debian package {package})"
        );
        eprintln!("skipped: {tool} is not installed (Debian package {package})");
    }
    ok
}
