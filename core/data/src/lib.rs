//! unlearn's data sets: the embedded digits, the file formats a config can name and `unlearn
//! data fetch`. The data-set type itself, its split and augmentation live in `unlearn-api`
//! (re-exported here), since methods see them.

mod digits;
pub mod fetch;
pub mod formats;

pub use digits::{DIGITS_CREDIT, digits};
pub use unlearn_api::data::*;

// Module paths the format readers share with the rest of unlearn (`crate::data::Dataset`).
use unlearn_api::{data, io};

/// The data sets a config can name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DatasetName {
    /// 1,797 handwritten 8x8 digits (UCI, CC BY 4.0), embedded in the binary.
    Digits,
    /// A deterministic synthetic set for tests (see `synthetic`).
    Synthetic,
    /// CIFAR-10 binary (`cifar-10-batches-bin/`, as `unlearn data fetch cifar10` leaves it).
    Cifar10,
    /// CIFAR-100 binary (`cifar-100-binary/`); fine labels.
    Cifar100,
    /// SVHN (`train_32x32.mat`, `test_32x32.mat`).
    Svhn,
    /// MNIST IDX files (optionally gzipped).
    Mnist,
    /// Fashion-MNIST IDX files (optionally gzipped).
    FashionMnist,
    /// TinyImageNet-200 (`tiny-imagenet-200/`): its val folder is the test set.
    TinyImagenet,
    /// `<dir>/{train,test}/<class>/*.{jpg,jpeg,png}`.
    ImageFolder,
}

impl DatasetName {
    /// The file format of a data set read from disk (None: built in).
    pub fn format(self) -> Option<formats::Format> {
        use formats::Format;
        Some(match self {
            DatasetName::Digits | DatasetName::Synthetic => return None,
            DatasetName::Cifar10 => Format::Cifar10,
            DatasetName::Cifar100 => Format::Cifar100,
            DatasetName::Svhn => Format::Svhn,
            DatasetName::Mnist => Format::Mnist,
            DatasetName::FashionMnist => Format::FashionMnist,
            DatasetName::TinyImagenet => Format::TinyImagenet,
            DatasetName::ImageFolder => Format::ImageFolder,
        })
    }
}
