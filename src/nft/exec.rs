//! Running nft commands: libnftables in process (≈0.2 ms a transaction) or, where the
//! library is missing, the `nft` binary (≈5 ms). Both take and give JSON.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("nft: {0}")]
    Nft(String),
    #[error("cannot run nft: {0}")]
    Spawn(String),
    #[error("{}", PERMISSION_DENIED)]
    PermissionDenied,
}

pub use crate::nfnetlink::PERMISSION_DENIED;

/// nft's wording for EPERM / EACCES (its stderr spans several lines, none of them ours).
fn refused(msg: &str) -> bool {
    msg.contains("Operation not permitted") || msg.contains("Permission denied")
}

/// Whether this process holds CAP_NET_ADMIN, which nfnetlink demands of every request.
/// libnftables writes "Operation not permitted (you must be root)" straight to fd 2,
/// bypassing the error buffer, so the only way to keep a refused call quiet is not to
/// make it. Unknown (no /proc) counts as yes: the kernel still has the last word.
/// Read once: netguard never changes its own capabilities, and this guards every call.
pub fn has_net_admin() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        const CAP_NET_ADMIN: u32 = 12;
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return true;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_none_or(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
    })
}

/// Something that runs one nft command buffer (text or JSON) and returns its JSON output.
pub trait NftExec: Send + Sync {
    fn run(&self, input: &str) -> Result<String, ExecError>;
    /// Like `run`, with set contents left out of listings (nft's `-t`): a structure check
    /// that costs the same at 10 and at 100,000 elements.
    fn run_terse(&self, input: &str) -> Result<String, ExecError>;
    /// An nft script in its text syntax: what JSON cannot say (the raw-keyed sets'
    /// `typeof` declarations, `Changes::raw_set_decls`).
    fn run_text(&self, input: &str) -> Result<(), ExecError>;
    fn describe(&self) -> &'static str;
}

/// Chooses libnftables when it can be loaded, else the `nft` binary.
/// `NETGUARD_NFT=process` forces the binary (for comparison and debugging).
pub fn default_exec() -> Box<dyn NftExec> {
    if std::env::var("NETGUARD_NFT").as_deref() != Ok("process")
        && let Ok(lib) = LibNftables::load()
    {
        return Box::new(lib);
    }
    Box::new(NftProcess)
}

pub struct NftProcess;

impl NftProcess {
    fn run_args(&self, args: &[&str], input: &str) -> Result<String, ExecError> {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                ExecError::Spawn(format!("nft: {e} (is the nftables package installed?)"))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| ExecError::Spawn(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| ExecError::Spawn(e.to_string()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if refused(&err) {
                return Err(ExecError::PermissionDenied);
            }
            return Err(ExecError::Nft(err.trim().to_string()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl NftProcess {
    /// nft 1.0.6 prints nothing for a `list` command read with `-f -`: give listings as
    /// arguments (they are netguard's own fixed commands, never user text), batches on stdin.
    fn run_any(&self, flags: &[&str], input: &str) -> Result<String, ExecError> {
        let mut args: Vec<&str> = flags.to_vec();
        if input.starts_with("list ") {
            args.extend(input.split_whitespace());
            self.run_args(&args, "")
        } else {
            args.extend(["-f", "-"]);
            self.run_args(&args, input)
        }
    }
}

impl NftExec for NftProcess {
    fn run(&self, input: &str) -> Result<String, ExecError> {
        self.run_any(&["-j"], input)
    }

    fn run_terse(&self, input: &str) -> Result<String, ExecError> {
        self.run_any(&["-t", "-j"], input)
    }

    /// Without `-j`: `nft -j -f -` reads text commands as nothing at all (exit 0).
    fn run_text(&self, input: &str) -> Result<(), ExecError> {
        self.run_any(&[], input).map(drop)
    }

    fn describe(&self) -> &'static str {
        "nft binary"
    }
}

type CtxNew = unsafe extern "C" fn(c_uint) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type Buffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type GetBuf = unsafe extern "C" fn(*mut c_void) -> *const c_char;

struct Ctx(*mut c_void);
// The context is only touched under the mutex below.
unsafe impl Send for Ctx {}

pub struct LibNftables {
    _lib: libloading::Library,
    ctx: Mutex<Ctx>,
    free: CtxFree,
    set_flags: SetFlags,
    run: RunCmd,
    out: GetBuf,
    err: GetBuf,
}

// In libnftables 1.0.6 JSON input is switched on by the JSON output flag (docs/architecture.md 5.6).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;
const NFT_CTX_OUTPUT_TERSE: c_uint = 1 << 11;

impl LibNftables {
    pub fn load() -> Result<LibNftables, ExecError> {
        // SAFETY: loading a system library with no initialisers that matter to us; every
        // symbol is resolved with the signature of libnftables' public header.
        unsafe {
            let lib = libloading::Library::new("libnftables.so.1")
                .map_err(|e| ExecError::Spawn(format!("libnftables.so.1: {e}")))?;
            let sym = |name: &[u8]| -> Result<*const (), ExecError> {
                lib.get::<*const ()>(name)
                    .map(|s| *s)
                    .map_err(|e| ExecError::Spawn(format!("libnftables: {e}")))
            };
            let new: CtxNew = std::mem::transmute(sym(b"nft_ctx_new\0")?);
            let free: CtxFree = std::mem::transmute(sym(b"nft_ctx_free\0")?);
            let set_flags: SetFlags = std::mem::transmute(sym(b"nft_ctx_output_set_flags\0")?);
            let buf_out: Buffer = std::mem::transmute(sym(b"nft_ctx_buffer_output\0")?);
            let buf_err: Buffer = std::mem::transmute(sym(b"nft_ctx_buffer_error\0")?);
            let run: RunCmd = std::mem::transmute(sym(b"nft_run_cmd_from_buffer\0")?);
            let out: GetBuf = std::mem::transmute(sym(b"nft_ctx_get_output_buffer\0")?);
            let err: GetBuf = std::mem::transmute(sym(b"nft_ctx_get_error_buffer\0")?);
            let ctx = new(0);
            if ctx.is_null() {
                return Err(ExecError::Spawn("nft_ctx_new failed".into()));
            }
            set_flags(ctx, NFT_CTX_OUTPUT_JSON);
            buf_out(ctx);
            buf_err(ctx);
            Ok(LibNftables {
                _lib: lib,
                ctx: Mutex::new(Ctx(ctx)),
                free,
                set_flags,
                run,
                out,
                err,
            })
        }
    }
}

impl LibNftables {
    fn run_flags(&self, input: &str, flags: c_uint) -> Result<String, ExecError> {
        let cmd = CString::new(input)
            .map_err(|_| ExecError::Nft("command contains a NUL byte".into()))?;
        if !has_net_admin() {
            return Err(ExecError::PermissionDenied);
        }
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: ctx is a live context owned by self; buffers are NUL-terminated strings
        // owned by the context and copied before the lock is released.
        unsafe {
            if flags != NFT_CTX_OUTPUT_JSON {
                (self.set_flags)(ctx.0, flags);
            }
            let rc = (self.run)(ctx.0, cmd.as_ptr());
            if flags != NFT_CTX_OUTPUT_JSON {
                (self.set_flags)(ctx.0, NFT_CTX_OUTPUT_JSON);
            }
            let read = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let out = read((self.out)(ctx.0));
            let err = read((self.err)(ctx.0));
            if rc != 0 {
                if refused(&err) {
                    return Err(ExecError::PermissionDenied);
                }
                return Err(ExecError::Nft(err.trim().to_string()));
            }
            Ok(out)
        }
    }
}

impl NftExec for LibNftables {
    fn describe(&self) -> &'static str {
        "libnftables"
    }

    fn run(&self, input: &str) -> Result<String, ExecError> {
        self.run_flags(input, NFT_CTX_OUTPUT_JSON)
    }

    fn run_terse(&self, input: &str) -> Result<String, ExecError> {
        self.run_flags(input, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_TERSE)
    }

    /// libnftables parses a buffer that is not JSON as text.
    fn run_text(&self, input: &str) -> Result<(), ExecError> {
        self.run(input).map(drop)
    }
}

impl Drop for LibNftables {
    fn drop(&mut self) {
        let ctx = self.ctx.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: created by nft_ctx_new, freed once.
        unsafe { (self.free)(ctx.0) }
    }
}
