//! The embedded digits set: 1,797 handwritten 8x8 digits, pixels 0..16.

use std::io::Read;

use super::{DataError, Dataset};

/// Shipped inside the binary; see `core/data/assets/DIGITS-NOTICE.md`.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../assets/digits.csv.gz");

/// Credit line required by the data set's licence; printed in reports.
pub const DIGITS_CREDIT: &str = "Digits: UCI Optical Recognition of Handwritten Digits \
(E. Alpaydin, C. Kaynak, 1998), test set as shipped with scikit-learn; CC BY 4.0";

pub fn digits() -> Result<Dataset, DataError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| malformed(format!("cannot decompress: {e}")))?;
    parse_digits_csv(&text)
}

fn malformed(message: String) -> DataError {
    DataError::Malformed {
        name: "digits".into(),
        message,
    }
}

/// One sample per line: 64 pixels (0..16, row-major) and the label (0..9).
fn parse_digits_csv(text: &str) -> Result<Dataset, DataError> {
    let mut pixels = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(malformed(format!(
                "line {}: {} fields, expected 65",
                line_no + 1,
                fields.len()
            )));
        }
        for (i, f) in fields.iter().enumerate() {
            let v: u8 = f.trim().parse().map_err(|_| {
                malformed(format!(
                    "line {}: field {} `{f}` is not a small integer",
                    line_no + 1,
                    i + 1
                ))
            })?;
            let max = if i == 64 { 9 } else { 16 };
            if v > max {
                return Err(malformed(format!(
                    "line {}: field {} is {v}, above {max}",
                    line_no + 1,
                    i + 1
                )));
            }
            if i == 64 {
                labels.push(v as i64);
            } else {
                pixels.push(v);
            }
        }
    }
    Ok(Dataset::from_pixels(
        "digits",
        &pixels,
        [1, 8, 8],
        &labels,
        10,
        16.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_have_the_published_shape() {
        let d = digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.image_shape(), [1, 8, 8]);
        let counts = d.class_counts();
        assert_eq!(counts.iter().sum::<usize>(), 1797);
        assert!(
            counts.iter().all(|&c| (170..=190).contains(&c)),
            "{counts:?}"
        );
        // First row of the file: label 0, pixels starting 0,0,5,13,9,1.
        assert_eq!(d.labels_vec()[0], 0);
        let first: Vec<u8> = Vec::try_from(d.images.get(0).flatten(0, -1)).unwrap();
        assert_eq!(&first[..6], &[0, 0, 5, 13, 9, 1]);
        // Mean and std recomputed independently from the raw values.
        let all: Vec<u8> = Vec::try_from(d.images.flatten(0, -1)).unwrap();
        let m = all.iter().map(|&v| v as f64 / 16.0).sum::<f64>() / all.len() as f64;
        let var = all
            .iter()
            .map(|&v| (v as f64 / 16.0 - m).powi(2))
            .sum::<f64>()
            / all.len() as f64;
        assert!((d.mean[0] - m).abs() < 1e-9);
        assert!((d.std[0] - var.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn malformed_rows_are_reported_with_their_line() {
        let bad = "1,2,3\n";
        let e = parse_digits_csv(bad).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("65"), "{e}");
        let row: Vec<String> = (0..64)
            .map(|_| "17".to_string())
            .chain(["3".into()])
            .collect();
        let e = parse_digits_csv(&row.join(",")).unwrap_err().to_string();
        assert!(e.contains("above 16"), "{e}");
    }
}
