//! Looking up local accounts (thread-safe: `getpwnam_r`).

/// The home directory of the local account `user`, if there is one.
pub fn home_of(user: &str) -> Option<String> {
    let name = std::ffi::CString::new(user).ok()?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: all pointers are to live locals; getpwnam_r writes the
        // entry's strings into `buf` and sets `result` to `&mut pwd` or null.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: pw_dir points into `buf`, NUL-terminated.
        let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
        return Some(dir.to_string_lossy().into_owned());
    }
}

/// The name of the account the host runs as (`uid N` when it has none).
pub fn current_user_name() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    // SAFETY: as in `home_of`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_has_a_home_and_nobody_made_up_has_none() {
        assert_eq!(super::home_of("root").as_deref(), Some("/root"));
        assert_eq!(super::home_of("no-such-user-wasmspawner"), None);
        assert_eq!(super::home_of("nul\0byte"), None);
    }
}
