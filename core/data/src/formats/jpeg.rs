//! JPEG decoding that matches PIL (and so torchvision's `ImageFolder`) pixel for pixel.
//!
//! PIL decodes JPEGs with libjpeg-turbo at libjpeg's defaults: the accurate integer IDCT
//! (`JDCT_ISLOW`), "fancy" (triangle-filter) chroma upsampling and its YCbCr->RGB tables. Other
//! decoders (zune-jpeg, which the `image` crate uses) upsample and round differently and give
//! values off by up to a few levels, so a model trained in PyTorch would see other inputs here
//! (docs/results/jpeg-decoding.md). The `mozjpeg` crate builds mozjpeg's C sources, a fork of
//! libjpeg-turbo whose decoder is libjpeg-turbo's, with nothing but a C compiler; at the same
//! defaults it gives PIL's pixels (tested against PIL in tests/pil_jpeg.rs).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{JWRN_JPEG_EOF, jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

use super::bad;
use crate::data::DataError;

/// An RGB image: `width x height` pixels, row-major, interleaved R, G, B.
pub(crate) struct Rgb {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Decodes the JPEG `bytes` of `path` to RGB as `PIL.Image.open(path).convert("RGB")` does:
/// colour as libjpeg-turbo's defaults give it, greyscale replicated to three channels. CMYK and
/// other colour spaces, truncated and malformed files are errors naming `path`.
pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<Rgb, DataError> {
    // libjpeg reports fatal errors through `error_exit`, which must not return; the error manager
    // below unwinds instead (mozjpeg-sys compiles the C code with -fexceptions for this), and the
    // unwind ends here. resume_unwind skips the panic hook, so nothing is printed.
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes))) {
        Ok(Ok(rgb)) => Ok(rgb),
        Ok(Err(message)) => Err(bad(path, format!("cannot decode JPEG: {message}"))),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg failed".into());
            Err(bad(path, format!("cannot decode JPEG: {message}")))
        }
    }
}

fn decode_unguarded(bytes: &[u8]) -> Result<Rgb, String> {
    let dec = Decompress::with_err(error_mgr())
        .from_mem(bytes)
        .map_err(|e| e.to_string())?;
    // What PIL opens as "L" or "RGB" (and so converts to RGB as libjpeg does): PIL's
    // convert("RGB") of CMYK is a naive formula no libjpeg conversion reproduces.
    match dec.color_space() {
        ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => {}
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            return Err("CMYK JPEGs are not supported; convert the file to RGB".into());
        }
        other => return Err(format!("unsupported JPEG colour space {other:?}")),
    }
    // libjpeg's defaults are PIL's: JDCT_ISLOW, fancy upsampling, no scaling. Set anyway, so a
    // change of the wrapper's defaults cannot change the pixels.
    let mut dec = dec;
    dec.dct_method(mozjpeg::DctMethod::IntegerSlow);
    dec.do_fancy_upsampling(true);
    let mut started = dec.rgb().map_err(|e| e.to_string())?;
    let (width, height) = (started.width(), started.height());
    let data: Vec<u8> = started.read_scanlines().map_err(|e| e.to_string())?;
    if data.len() != 3 * width * height {
        return Err(format!(
            "decoded {} bytes for a {width}x{height} image",
            data.len()
        ));
    }
    Ok(Rgb {
        width: width as u32,
        height: height as u32,
        data,
    })
}

/// libjpeg's standard error manager, except that errors unwind (to `decode`) instead of calling
/// exit(), and that running out of data is an error too: libjpeg would warn, pad the image with
/// grey and go on, while PIL raises "image file is truncated". Other warnings (corrupt entropy
/// data, for example) are ignored, as PIL ignores them.
fn error_mgr() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills in every field of the zeroed struct.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `err` is a live struct for libjpeg to fill in.
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(unwind_error_exit);
    err.emit_message = Some(unwind_on_eof);
    err
}

extern "C-unwind" fn unwind_error_exit(cinfo: &mut jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(message(cinfo)));
}

extern "C-unwind" fn unwind_on_eof(cinfo: &mut jpeg_common_struct, level: std::os::raw::c_int) {
    // SAFETY: libjpeg passes the struct whose `err` points at the manager above.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == JWRN_JPEG_EOF {
        std::panic::resume_unwind(Box::new("the file is truncated".to_string()));
    }
}

/// libjpeg's text for the current message.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // JMSG_LENGTH_MAX in jerror.h.
    let mut buffer = [0u8; 200];
    // SAFETY: format_message writes at most JMSG_LENGTH_MAX bytes, NUL-terminated.
    unsafe {
        let err = &*cinfo.err;
        match err.format_message {
            Some(format) => {
                let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
                    std::mem::transmute(format);
                format(cinfo, buffer.as_mut_ptr());
            }
            None => return format!("libjpeg error {}", err.msg_code),
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    format!("libjpeg: {}", String::from_utf8_lossy(&buffer[..end]))
}
