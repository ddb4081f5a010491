//! The fixed vocabulary of the shapes world: shape, colour and background words.

use super::error::ShapesError;

/// Shape words, in class order: `SHAPES[i]` has class index `i + 1`.
pub const SHAPES: [&str; 8] = [
    "circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
];

/// Colour words an object can have.
pub const COLOURS: [&str; 8] = [
    "red", "green", "blue", "yellow", "orange", "purple", "white", "black",
];

/// Background pattern words.
pub const BACKGROUNDS: [&str; 4] = ["plain", "striped", "checkered", "noisy"];

/// Words that captions may use besides shapes, colours and background kinds.
pub const FUNCTION_WORDS: [&str; 7] = ["a", "an", "and", "on", "the", "with", "background"];

/// The class name of every pixel that belongs to no object (class index 0).
pub const BACKGROUND_CLASS: &str = "background";

/// Class names by class index: `background` followed by the shapes.
pub fn class_names() -> Vec<&'static str> {
    std::iter::once(BACKGROUND_CLASS)
        .chain(SHAPES.iter().copied())
        .collect()
}

/// The full ordered word list: shapes, colours, background kinds, then function words.
/// Every caption word is in it.
pub fn vocabulary() -> Vec<&'static str> {
    SHAPES
        .iter()
        .chain(COLOURS.iter())
        .chain(BACKGROUNDS.iter())
        .chain(FUNCTION_WORDS.iter())
        .copied()
        .collect()
}

/// Position of `word` in [`vocabulary`], if it is there.
pub fn word_index(word: &str) -> Option<usize> {
    vocabulary().iter().position(|w| *w == word)
}

fn lookup<T: Copy>(
    kind: &'static str,
    words: &[&str],
    all: &[T],
    word: &str,
) -> Result<T, ShapesError> {
    words
        .iter()
        .position(|w| *w == word)
        .map(|i| all[i])
        .ok_or_else(|| ShapesError::UnknownWord {
            kind,
            word: word.to_string(),
            vocabulary: words.join(", "),
        })
}

macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $words:ident, [$($variant:ident),+ $(,)?]) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in vocabulary order.
            pub const ALL: [$name; $words.len()] = [$($name::$variant),+];

            /// The vocabulary word for this value.
            pub fn name(self) -> &'static str {
                $words[self.index()]
            }

            /// Position in vocabulary order (0-based).
            pub fn index(self) -> usize {
                self as usize
            }

            /// Parses a vocabulary word; an unknown word is an error that lists the vocabulary.
            pub fn from_name(word: &str) -> Result<Self, ShapesError> {
                lookup($kind, &$words, &Self::ALL, word)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ShapesError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_name(s)
            }
        }
    };
}

word_enum!(
    /// An object's shape; its class index in label maps is `index() + 1`.
    Shape, "shape", SHAPES,
    [Circle, Square, Triangle, Star, Cross, Ring, Diamond, Hexagon]
);

word_enum!(
    /// An object's named colour.
    Colour, "colour", COLOURS,
    [Red, Green, Blue, Yellow, Orange, Purple, White, Black]
);

word_enum!(
    /// The background pattern of a scene.
    Background, "background", BACKGROUNDS,
    [Plain, Striped, Checkered, Noisy]
);

impl Shape {
    /// Class index in label maps (1..=8; 0 is background).
    pub fn class(self) -> u8 {
        self.index() as u8 + 1
    }

    /// The shape with class index `class` (1..=8).
    pub fn from_class(class: u8) -> Option<Shape> {
        (class as usize)
            .checked_sub(1)
            .and_then(|i| Shape::ALL.get(i).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classes() {
        for s in Shape::ALL {
            assert_eq!(Shape::from_name(s.name()).unwrap(), s);
            assert_eq!(Shape::from_class(s.class()), Some(s));
        }
        for c in Colour::ALL {
            assert_eq!(c.name().parse::<Colour>().unwrap(), c);
        }
        for b in Background::ALL {
            assert_eq!(Background::from_name(b.name()).unwrap(), b);
        }
        assert_eq!(Shape::Circle.class(), 1);
        assert_eq!(Shape::Hexagon.class(), 8);
        assert_eq!(Shape::from_class(0), None);
        assert_eq!(Shape::from_class(9), None);
        assert_eq!(class_names().len(), 9);
        assert_eq!(class_names()[0], "background");
        assert_eq!(class_names()[4], "star");
    }

    #[test]
    fn unknown_word_lists_vocabulary() {
        let err = Shape::from_name("pentagon").unwrap_err().to_string();
        assert!(err.contains("pentagon"), "{err}");
        assert!(err.contains("circle, square, triangle"), "{err}");
        let err = Colour::from_name("magenta").unwrap_err().to_string();
        assert!(err.contains("purple, white, black"), "{err}");
    }

    #[test]
    fn vocabulary_is_ordered_and_unique() {
        let v = vocabulary();
        assert_eq!(v.len(), 8 + 8 + 4 + 7);
        assert_eq!(&v[..3], &["circle", "square", "triangle"]);
        assert_eq!(v[8], "red");
        assert_eq!(v[16], "plain");
        assert_eq!(*v.last().unwrap(), "background");
        let mut sorted = v.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len());
        assert_eq!(word_index("star"), Some(3));
        assert_eq!(word_index("pentagon"), None);
    }
}
