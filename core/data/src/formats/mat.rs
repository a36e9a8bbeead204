//! A minimal reader for MATLAB level-5 MAT files (the format of SVHN's `*_32x32.mat`): the
//! 128-byte header (either byte order), top-level `miMATRIX` elements, plain or inside
//! `miCOMPRESSED` (zlib) elements, with array flags, dimensions, name and real part.
//!
//! Numeric arrays only (classes double, single, int8..uint64), real only. The real part may be
//! stored in any of the integer or float data types (MATLAB stores a double array of small
//! integers as uint8, for example): `miUINT8` data come back as bytes, all others as `f64`.
//! Not supported, each with an error that says so: v7.3 files (HDF5), v4 files, complex, sparse,
//! char, cell, struct and object arrays (only when they are among the requested variables; others
//! are skipped unread).

use std::path::Path;

use super::{bad, inflate, read_file};
use crate::data::DataError;

/// One variable of a MAT file.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    pub name: String,
    /// MATLAB's class name (`"uint8"`, `"double"`, ...).
    pub class: &'static str,
    /// Dimensions in MATLAB order; the data are column-major (first index fastest).
    pub dims: Vec<usize>,
    pub data: MatData,
}

/// The real part of an array: bytes when stored as `miUINT8`, otherwise converted to `f64`.
#[derive(Debug, Clone, PartialEq)]
pub enum MatData {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

impl MatData {
    pub fn len(&self) -> usize {
        match self {
            MatData::U8(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

/// Reads the variables named in `wanted` from the MAT file at `path`, in the order of `wanted`.
/// Every one must be present (the error lists the variables found).
pub fn read_mat(path: &Path, wanted: &[&str]) -> Result<Vec<MatArray>, DataError> {
    let bytes = read_file(path)?;
    parse_mat(path, &bytes, wanted)
}

pub(crate) fn parse_mat(
    path: &Path,
    bytes: &[u8],
    wanted: &[&str],
) -> Result<Vec<MatArray>, DataError> {
    let big_endian = check_header(path, bytes)?;
    let e = Endian(big_endian);
    let mut found: Vec<MatArray> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut pos = 128;
    while pos < bytes.len() {
        let at = pos;
        let rest = &bytes[pos..];
        if rest.len() < 8 && rest.iter().all(|&b| b == 0) {
            break; // zero padding at the end of the file
        }
        if rest.len() < 8 {
            return Err(bad(
                path,
                format!(
                    "truncated: {} stray bytes at offset {at}, where a data element tag should be",
                    rest.len()
                ),
            ));
        }
        let typ = e.u32(&rest[..4]);
        if typ >> 16 != 0 {
            // A small data element at top level holds no variable: skip it.
            pos += 8;
            continue;
        }
        let size = e.u32(&rest[4..8]) as usize;
        let Some(body) = rest.get(8..8 + size) else {
            return Err(bad(
                path,
                format!(
                    "truncated: the data element at offset {at} declares {size} bytes, \
                     only {} remain",
                    rest.len() - 8
                ),
            ));
        };
        let parsed = match typ {
            MI_COMPRESSED => {
                pos += 8 + size;
                let inner = inflate(
                    path,
                    body,
                    false,
                    &format!("compressed element at offset {at}"),
                )?;
                if inner.len() < 8 {
                    return Err(bad(
                        path,
                        format!(
                            "the compressed element at offset {at} holds {} bytes, no data element",
                            inner.len()
                        ),
                    ));
                }
                let inner_typ = e.u32(&inner[..4]);
                let inner_size = e.u32(&inner[4..8]) as usize;
                if inner_typ != MI_MATRIX {
                    return Err(bad(
                        path,
                        format!(
                            "the compressed element at offset {at} holds data type {inner_typ}, expected a matrix (14)"
                        ),
                    ));
                }
                let Some(body) = inner.get(8..8 + inner_size) else {
                    return Err(bad(
                        path,
                        format!(
                            "truncated: the matrix compressed at offset {at} declares {inner_size} bytes, \
                             its zlib data hold {}",
                            inner.len() - 8
                        ),
                    ));
                };
                parse_matrix(path, e, body, at, wanted)?
            }
            MI_MATRIX => {
                pos += 8 + size.div_ceil(8) * 8;
                parse_matrix(path, e, body, at, wanted)?
            }
            other => {
                return Err(bad(
                    path,
                    format!(
                        "the data element at offset {at} has type {other}, expected a matrix (14) \
                         or compressed data (15)"
                    ),
                ));
            }
        };
        match parsed {
            Parsed::Skipped(name) => names.push(name),
            Parsed::Array(a) => {
                names.push(a.name.clone());
                found.push(a);
            }
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        match found.iter().position(|a| a.name == *w) {
            Some(i) => out.push(found.swap_remove(i)),
            None => {
                return Err(bad(
                    path,
                    format!(
                        "has no variable `{w}` (found: {})",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Checks the 128-byte header; returns whether the file is big-endian.
fn check_header(path: &Path, bytes: &[u8]) -> Result<bool, DataError> {
    if bytes.starts_with(HDF5_SIGNATURE) || bytes.get(512..520) == Some(HDF5_SIGNATURE) {
        return Err(v73(path));
    }
    if bytes.len() < 128 {
        return Err(bad(
            path,
            format!(
                "truncated: {} bytes, a MAT file starts with a 128-byte header",
                bytes.len()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&bytes[..116]);
    if text.starts_with("MATLAB 7.3") {
        return Err(v73(path));
    }
    if !text.starts_with("MATLAB 5.0 MAT-file") {
        let shown: String = text.chars().take(24).filter(|c| !c.is_control()).collect();
        return Err(bad(
            path,
            format!(
                "wrong magic: not a MATLAB v5 MAT file (its header should start with \
                 \"MATLAB 5.0 MAT-file\", it starts with {shown:?})"
            ),
        ));
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => {
            return Err(bad(
                path,
                format!(
                    "wrong magic: the endian indicator is {other:?}, expected \"IM\" or \"MI\""
                ),
            ));
        }
    };
    let version = Endian(big_endian).u16(&bytes[124..126]);
    if version != 0x0100 {
        return Err(bad(
            path,
            format!("MAT file version 0x{version:04x}, this reader handles 0x0100 (v5/v7)"),
        ));
    }
    Ok(big_endian)
}

fn v73(path: &Path) -> DataError {
    bad(
        path,
        "is a MATLAB v7.3 (HDF5) file; this reader handles v5/v7 MAT files (re-save it in MATLAB \
         with `save -v7`, or load and re-save it with Python's h5py and scipy.io.savemat)",
    )
}

#[derive(Clone, Copy)]
struct Endian(bool);

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.0 {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn u64(self, b: &[u8]) -> u64 {
        let a: [u8; 8] = b[..8].try_into().unwrap();
        if self.0 {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
}

enum Parsed {
    Skipped(String),
    Array(MatArray),
}

/// The sub-elements of a matrix, in order.
struct Subs<'a> {
    e: Endian,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Subs<'a> {
    /// The next sub-element as (data type, data), or a message when it is cut off.
    fn next(&mut self, what: &str) -> Result<(u32, &'a [u8]), String> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        if rest.len() < 8 {
            return Err(format!("truncated before its {what}"));
        }
        let first = self.e.u32(&rest[..4]);
        if first >> 16 != 0 {
            // Small data element: type and size share the first word, data in the second.
            let size = (first >> 16) as usize;
            if size > 4 {
                return Err(format!(
                    "its {what} is a small element of {size} bytes (at most 4)"
                ));
            }
            self.pos += 8;
            return Ok((first & 0xffff, &rest[4..4 + size]));
        }
        let size = self.e.u32(&rest[4..8]) as usize;
        let data = rest.get(8..8 + size).ok_or_else(|| {
            format!(
                "truncated: its {what} declares {size} bytes, only {} remain",
                rest.len() - 8
            )
        })?;
        self.pos += 8 + size.div_ceil(8) * 8;
        Ok((first, data))
    }
}

fn class_name(class: u32) -> Option<&'static str> {
    Some(match class {
        6 => "double",
        7 => "single",
        8 => "int8",
        9 => "uint8",
        10 => "int16",
        11 => "uint16",
        12 => "int32",
        13 => "uint32",
        14 => "int64",
        15 => "uint64",
        _ => return None,
    })
}

fn other_class_name(class: u32) -> String {
    match class {
        1 => "cell".into(),
        2 => "struct".into(),
        3 => "object".into(),
        4 => "char".into(),
        5 => "sparse".into(),
        c => format!("unknown class {c}"),
    }
}

fn parse_matrix(
    path: &Path,
    e: Endian,
    body: &[u8],
    at: usize,
    wanted: &[&str],
) -> Result<Parsed, DataError> {
    let fail = |m: String| bad(path, format!("the matrix at offset {at}: {m}"));
    let mut subs = Subs {
        e,
        bytes: body,
        pos: 0,
    };
    let (t, flags) = subs.next("array flags").map_err(fail)?;
    if t != MI_UINT32 || flags.len() != 8 {
        return Err(fail(format!(
            "array flags have type {t} and {} bytes, expected uint32 (6) and 8",
            flags.len()
        )));
    }
    let word = e.u32(&flags[..4]);
    let class = word & 0xff;
    let complex = word & 0x800 != 0;
    let (t, dims_raw) = subs.next("dimensions").map_err(fail)?;
    if t != MI_INT32 || dims_raw.len() % 4 != 0 || dims_raw.len() < 8 {
        return Err(fail(format!(
            "dimensions have type {t} and {} bytes, expected int32 (5) and at least 2 values",
            dims_raw.len()
        )));
    }
    let dims_i: Vec<i32> = dims_raw.chunks_exact(4).map(|c| e.u32(c) as i32).collect();
    let (t, name_raw) = subs.next("name").map_err(fail)?;
    if t != MI_INT8 {
        return Err(fail(format!("the name has type {t}, expected int8 (1)")));
    }
    let name = String::from_utf8_lossy(name_raw).into_owned();
    if !wanted.contains(&name.as_str()) {
        return Ok(Parsed::Skipped(name));
    }
    let fail = |m: String| bad(path, format!("variable `{name}`: {m}"));
    let Some(class_str) = class_name(class) else {
        return Err(fail(format!(
            "{} arrays are not supported (numeric arrays only)",
            other_class_name(class)
        )));
    };
    if complex {
        return Err(fail("complex arrays are not supported".into()));
    }
    if let Some(d) = dims_i.iter().find(|&&d| d < 0) {
        return Err(fail(format!("negative dimension {d}")));
    }
    let dims: Vec<usize> = dims_i.iter().map(|&d| d as usize).collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fail(format!("dimensions {dims:?} overflow")))?;
    let (t, real) = subs.next("real part").map_err(fail)?;
    let width = match t {
        1 | 2 => 1,
        3 | 4 => 2,
        5..=7 => 4,
        9 | 12 | 13 => 8,
        other => {
            return Err(fail(format!(
                "data type {other} is not supported (int8..uint64, single, double)"
            )));
        }
    };
    if count.checked_mul(width) != Some(real.len()) {
        return Err(fail(format!(
            "dimensions {dims:?} make {count} values ({} bytes), the real part has {} bytes",
            count.saturating_mul(width),
            real.len()
        )));
    }
    let data = if t == MI_UINT8 {
        MatData::U8(real.to_vec())
    } else {
        MatData::F64(
            real.chunks_exact(width)
                .map(|b| match t {
                    1 => b[0] as i8 as f64,
                    3 => e.u16(b) as i16 as f64,
                    4 => e.u16(b) as f64,
                    5 => e.u32(b) as i32 as f64,
                    6 => e.u32(b) as f64,
                    7 => f32::from_bits(e.u32(b)) as f64,
                    9 => f64::from_bits(e.u64(b)),
                    12 => e.u64(b) as i64 as f64,
                    _ => e.u64(b) as f64,
                })
                .collect(),
        )
    };
    Ok(Parsed::Array(MatArray {
        name,
        class: class_str,
        dims,
        data,
    }))
}

/// Building MAT v5 files byte by byte, for tests.
#[cfg(test)]
pub(crate) mod build {
    /// A data element (little-endian tag, padded to 8 bytes).
    pub fn element(typ: u32, data: &[u8]) -> Vec<u8> {
        let mut v = typ.to_le_bytes().to_vec();
        v.extend((data.len() as u32).to_le_bytes());
        v.extend(data);
        v.resize(v.len().div_ceil(8) * 8, 0);
        v
    }

    /// An `miMATRIX` element of class `class` whose real part has data type `typ`.
    pub fn matrix(name: &str, class: u32, dims: &[i32], typ: u32, data: &[u8]) -> Vec<u8> {
        let mut body = element(6, &[class as u8, 0, 0, 0, 0, 0, 0, 0]);
        let d: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        body.extend(element(5, &d));
        if name.len() <= 4 {
            // MATLAB writes short names as small data elements: size and type in one word.
            body.extend((((name.len() as u32) << 16) | 1).to_le_bytes());
            let mut packed = name.as_bytes().to_vec();
            packed.resize(4, 0);
            body.extend(packed);
        } else {
            body.extend(element(1, name.as_bytes()));
        }
        body.extend(element(typ, data));
        let mut v = 14u32.to_le_bytes().to_vec();
        v.extend((body.len() as u32).to_le_bytes());
        v.extend(body);
        v
    }

    /// An `miCOMPRESSED` element holding `element` (not padded, as MATLAB and scipy write it).
    pub fn compressed(element: &[u8]) -> Vec<u8> {
        let z = super::super::test_util::zlib(element);
        let mut v = 15u32.to_le_bytes().to_vec();
        v.extend((z.len() as u32).to_le_bytes());
        v.extend(z);
        v
    }

    pub fn header() -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file, Platform: test, Created on: today".to_vec();
        h.resize(116, b' ');
        h.extend([0u8; 8]);
        h.extend(0x0100u16.to_le_bytes());
        h.extend(b"IM");
        h
    }

    pub fn file(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut v = header();
        for e in elements {
            v.extend(e);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn parse(bytes: &[u8], wanted: &[&str]) -> Result<Vec<MatArray>, DataError> {
        parse_mat(Path::new("x.mat"), bytes, wanted)
    }

    #[test]
    fn reads_plain_and_compressed_matrices_of_several_types() {
        let doubles: Vec<u8> = [1.5f64, -2.0, 10.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let int16: Vec<u8> = [-3i16, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = file(&[
            compressed(&matrix("skipme", 4, &[1, 2], 4, &[65, 0, 66, 0])),
            matrix("a", 9, &[2, 3], 2, &[1, 2, 3, 4, 5, 6]),
            compressed(&matrix("b", 6, &[3, 1], 9, &doubles)),
            matrix("c", 6, &[1, 2], 3, &int16),
        ]);
        let got = parse(&f, &["c", "b", "a"]).unwrap();
        assert_eq!(got[0].data, MatData::F64(vec![-3.0, 7.0]));
        assert_eq!(got[0].class, "double");
        assert_eq!(got[1].data, MatData::F64(vec![1.5, -2.0, 10.0]));
        assert_eq!(got[1].dims, vec![3, 1]);
        assert_eq!(got[2].data, MatData::U8(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!((got[2].class, got[2].dims.clone()), ("uint8", vec![2, 3]));
        // Big-endian files read the same.
        let mut be = header();
        be[126..128].copy_from_slice(b"MI");
        be[124..126].copy_from_slice(&0x0100u16.to_be_bytes());
        let mut m = Vec::new();
        let sub = |typ: u32, data: &[u8]| {
            let mut v = typ.to_be_bytes().to_vec();
            v.extend((data.len() as u32).to_be_bytes());
            v.extend(data);
            v.resize(v.len().div_ceil(8) * 8, 0);
            v
        };
        let mut body = sub(6, &[0, 0, 0, 9, 0, 0, 0, 0]);
        body.extend(sub(5, &[0, 0, 0, 1, 0, 0, 0, 2]));
        body.extend(sub(1, b"z"));
        body.extend(sub(4, &[1, 2, 0, 3]));
        m.extend(14u32.to_be_bytes());
        m.extend((body.len() as u32).to_be_bytes());
        m.extend(body);
        be.extend(m);
        let z = &parse(&be, &["z"]).unwrap()[0];
        assert_eq!(z.data, MatData::F64(vec![258.0, 3.0]));
    }

    #[test]
    fn bad_mat_files_say_what_is_wrong() {
        let good = file(&[compressed(&matrix("y", 9, &[2, 1], 2, &[1, 2]))]);
        let e = parse(&good[..100], &["y"]).unwrap_err().to_string();
        assert!(
            e.contains("x.mat") && e.contains("truncated: 100 bytes"),
            "{e}"
        );
        let e = parse(&good[..good.len() - 3], &["y"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("offset 128"), "{e}");
        let mut corrupt = good.clone();
        corrupt[128 + 8] ^= 0xff; // the zlib header
        let e = parse(&corrupt, &["y"]).unwrap_err().to_string();
        assert!(e.contains("zlib data corrupt"), "{e}");
        let e = parse(&good, &["X", "y"]).unwrap_err().to_string();
        assert!(e.contains("has no variable `X` (found: y)"), "{e}");
        let mut v73 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".to_vec();
        v73.resize(512, 0);
        v73.extend(HDF5_SIGNATURE);
        let e = parse(&v73, &["y"]).unwrap_err().to_string();
        assert!(e.contains("v7.3 (HDF5)"), "{e}");
        let e = parse(&[b'x'; 200], &["y"]).unwrap_err().to_string();
        assert!(e.contains("wrong magic: not a MATLAB v5 MAT file"), "{e}");
        let short = file(&[matrix("y", 9, &[3, 1], 2, &[1, 2])]);
        let e = parse(&short, &["y"]).unwrap_err().to_string();
        assert!(
            e.contains("variable `y`") && e.contains("3 values (3 bytes), the real part has 2"),
            "{e}"
        );
        let cell = file(&[matrix("y", 1, &[1, 1], 2, &[1])]);
        let e = parse(&cell, &["y"]).unwrap_err().to_string();
        assert!(e.contains("cell arrays are not supported"), "{e}");
    }
}
