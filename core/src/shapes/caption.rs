//! Captions of a scene in several styles, with the word positions that name each object.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::scene::Scene;
use super::vocab::Shape;

/// How a caption is phrased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionStyle {
    /// "a red circle and a blue square on a striped background"
    Sentence,
    /// Segmentation-prompt style: "circle square background"
    ClassList,
    /// "red circle blue square"
    ColourShape,
    /// ""
    Empty,
}

impl CaptionStyle {
    /// Every style.
    pub const ALL: [CaptionStyle; 4] = [
        CaptionStyle::Sentence,
        CaptionStyle::ClassList,
        CaptionStyle::ColourShape,
        CaptionStyle::Empty,
    ];

    /// Its name in `captions.json`.
    pub fn name(self) -> &'static str {
        match self {
            CaptionStyle::Sentence => "sentence",
            CaptionStyle::ClassList => "class_list",
            CaptionStyle::ColourShape => "colour_shape",
            CaptionStyle::Empty => "empty",
        }
    }
}

/// Robustness options for training captions.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionOptions {
    /// Mention objects in random order instead of back to front.
    pub shuffle_objects: bool,
    /// Probability of dropping each word other than shape words (and other than
    /// "background" in class lists), so every object stays named by its shape.
    pub word_dropout: f64,
    /// Probability that a class list also names shapes absent from the scene (1 to all of
    /// them, at random places before "background"), as an open-vocabulary prompt may.
    pub absent_classes: f64,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        CaptionOptions {
            shuffle_objects: false,
            word_dropout: 0.0,
            absent_classes: 0.0,
        }
    }
}

/// The words of a caption that name one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptionObject {
    /// Index into the scene's `objects` (its instance id is this plus one).
    pub object: usize,
    /// Word indices (into `Caption::words`) of its colour and shape words; empty when unnamed.
    pub words: Vec<usize>,
}

/// A caption: its text, its words, and which words name which object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caption {
    /// The style it was made in.
    pub style: CaptionStyle,
    /// The words joined by single spaces.
    pub text: String,
    /// The words, all from the fixed vocabulary.
    pub words: Vec<&'static str>,
    /// One entry per scene object, in scene order.
    pub objects: Vec<CaptionObject>,
    /// Word indices naming the background (its kind and the word "background").
    pub background_words: Vec<usize>,
}

/// What a word refers to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A shape word of object `i` (never dropped).
    Shape(usize),
    /// A colour word of object `i`.
    Colour(usize),
    /// The background kind, or "background" in a sentence.
    Background,
    /// "background" in a class list (never dropped).
    BackgroundClass,
    /// A class-list shape word naming no object of the scene (never dropped).
    Absent,
    /// An article, "and", "on", "with".
    Function,
}

impl Scene {
    /// A caption of this scene in `style`.
    pub fn caption<R: Rng + ?Sized>(
        &self,
        style: CaptionStyle,
        options: &CaptionOptions,
        rng: &mut R,
    ) -> Caption {
        let mut order: Vec<usize> = (0..self.objects.len()).collect();
        if options.shuffle_objects {
            order.shuffle(rng);
        }
        let tokens = match style {
            CaptionStyle::Empty => Vec::new(),
            CaptionStyle::ColourShape => order
                .iter()
                .flat_map(|&i| {
                    let o = &self.objects[i];
                    [
                        (o.colour.name(), Role::Colour(i)),
                        (o.shape.name(), Role::Shape(i)),
                    ]
                })
                .collect(),
            CaptionStyle::ClassList => {
                let mut tokens: Vec<(&'static str, Role)> = Vec::new();
                for &i in &order {
                    let name = self.objects[i].shape.name();
                    if !tokens.iter().any(|(w, _)| *w == name) {
                        tokens.push((name, Role::Shape(i)));
                    }
                }
                if options.absent_classes > 0.0 && rng.random_bool(options.absent_classes.min(1.0))
                {
                    let mut absent: Vec<&'static str> = Shape::ALL
                        .iter()
                        .map(|s| s.name())
                        .filter(|n| !tokens.iter().any(|(w, _)| w == n))
                        .collect();
                    absent.shuffle(rng);
                    let k = if absent.is_empty() {
                        0
                    } else {
                        rng.random_range(1..=absent.len())
                    };
                    for name in absent.into_iter().take(k) {
                        let at = rng.random_range(0..=tokens.len());
                        tokens.insert(at, (name, Role::Absent));
                    }
                }
                tokens.push(("background", Role::BackgroundClass));
                tokens
            }
            CaptionStyle::Sentence => self.sentence(&order, rng),
        };
        let tokens: Vec<(&'static str, Role)> = if options.word_dropout > 0.0 {
            tokens
                .into_iter()
                .filter(|(_, role)| match role {
                    Role::Shape(_) | Role::BackgroundClass | Role::Absent => true,
                    _ => !rng.random_bool(options.word_dropout.min(1.0)),
                })
                .collect()
        } else {
            tokens
        };
        let mut words: Vec<&'static str> = tokens.iter().map(|(w, _)| *w).collect();
        fix_articles(&mut words);

        let named = |obj: usize, w: &str| -> bool {
            // A class-list shape word names every object of that shape.
            style == CaptionStyle::ClassList && w == self.objects[obj].shape.name()
        };
        let objects = (0..self.objects.len())
            .map(|obj| CaptionObject {
                object: obj,
                words: tokens
                    .iter()
                    .enumerate()
                    .filter(|(_, (w, role))| match role {
                        Role::Shape(i) | Role::Colour(i) => *i == obj || named(obj, w),
                        _ => false,
                    })
                    .map(|(k, _)| k)
                    .collect(),
            })
            .collect();
        let background_words = tokens
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| matches!(r, Role::Background | Role::BackgroundClass))
            .map(|(k, _)| k)
            .collect();
        Caption {
            style,
            text: words.join(" "),
            words,
            objects,
            background_words,
        }
    }

    /// "a red circle and a blue square on a striped background", or one of its variants.
    fn sentence<R: Rng + ?Sized>(&self, order: &[usize], rng: &mut R) -> Vec<(&'static str, Role)> {
        let definite = rng.random_bool(0.3);
        let article = if definite { "the" } else { "a" };
        let mut objs = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            if k > 0 {
                objs.push(("and", Role::Function));
            }
            let o = &self.objects[i];
            objs.push((article, Role::Function));
            objs.push((o.colour.name(), Role::Colour(i)));
            objs.push((o.shape.name(), Role::Shape(i)));
        }
        let bg = [
            (self.background().name(), Role::Background),
            ("background", Role::Background),
        ];
        let bg_article = if rng.random_bool(0.5) { "a" } else { "the" };
        match rng.random_range(0..3) {
            0 => {
                objs.push(("on", Role::Function));
                objs.push((bg_article, Role::Function));
                objs.extend(bg);
                objs
            }
            1 => {
                let mut t = vec![(bg_article, Role::Function)];
                t.extend(bg);
                t.push(("with", Role::Function));
                t.extend(objs);
                t
            }
            _ => objs,
        }
    }
}

/// "a" before a consonant, "an" before a vowel.
fn fix_articles(words: &mut [&'static str]) {
    for k in 0..words.len() {
        if matches!(words[k], "a" | "an") {
            let vowel = words
                .get(k + 1)
                .and_then(|w| w.chars().next())
                .is_some_and(|c| "aeiou".contains(c));
            words[k] = if vowel { "an" } else { "a" };
        }
    }
}

/// Picks caption styles with set probabilities (they need not sum to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSampler {
    /// Weight of full sentences.
    pub sentence: f64,
    /// Weight of bare class lists.
    pub class_list: f64,
    /// Weight of colour+shape phrases.
    pub colour_shape: f64,
    /// Weight of the empty caption.
    pub empty: f64,
    /// Shuffling and dropout.
    pub options: CaptionOptions,
}

impl Default for CaptionSampler {
    /// 40% sentences, 25% class lists, 25% colour+shape phrases, 10% empty.
    fn default() -> Self {
        CaptionSampler {
            sentence: 0.40,
            class_list: 0.25,
            colour_shape: 0.25,
            empty: 0.10,
            options: CaptionOptions::default(),
        }
    }
}

impl CaptionSampler {
    /// A random style by weight (sentences if every weight is zero).
    pub fn pick_style<R: Rng + ?Sized>(&self, rng: &mut R) -> CaptionStyle {
        let weights = [
            self.sentence,
            self.class_list,
            self.colour_shape,
            self.empty,
        ]
        .map(|w| w.max(0.0));
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return CaptionStyle::Sentence;
        }
        let mut x = rng.random_range(0.0..total);
        for (style, w) in CaptionStyle::ALL.into_iter().zip(weights) {
            if x < w {
                return style;
            }
            x -= w;
        }
        CaptionStyle::ALL
            .into_iter()
            .zip(weights)
            .rev()
            .find(|(_, w)| *w > 0.0)
            .map_or(CaptionStyle::Sentence, |(s, _)| s)
    }

    /// A caption of `scene` in a randomly picked style.
    pub fn sample<R: Rng + ?Sized>(&self, scene: &Scene, rng: &mut R) -> Caption {
        let style = self.pick_style(rng);
        scene.caption(style, &self.options, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::scene::SceneConfig;
    use crate::shapes::vocab::vocabulary;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scenes(n: u64) -> Vec<Scene> {
        let config = SceneConfig {
            antialias: false,
            ..SceneConfig::default()
        };
        (0..n)
            .map(|s| Scene::generate(&config, s).unwrap())
            .collect()
    }

    fn check(scene: &Scene, c: &Caption) {
        let vocab = vocabulary();
        assert_eq!(c.text, c.words.join(" "));
        assert_eq!(c.text.split_whitespace().count(), c.words.len());
        for w in &c.words {
            assert!(vocab.contains(w), "{w:?} in {:?}", c.text);
        }
        assert_eq!(c.objects.len(), scene.objects.len());
        for (i, co) in c.objects.iter().enumerate() {
            assert_eq!(co.object, i);
            let o = &scene.objects[i];
            if c.style == CaptionStyle::Empty {
                assert!(co.words.is_empty());
                continue;
            }
            assert!(
                c.words.contains(&o.shape.name()),
                "{} not in {:?}",
                o.shape,
                c.text
            );
            assert!(
                co.words.iter().any(|&k| c.words[k] == o.shape.name()),
                "object {i} ({}) not linked in {:?}",
                o.shape,
                c.text
            );
            for &k in &co.words {
                assert!(
                    c.words[k] == o.shape.name() || c.words[k] == o.colour.name(),
                    "{:?}",
                    c.text
                );
            }
        }
        for &k in &c.background_words {
            assert!(c.words[k] == "background" || c.words[k] == scene.background().name());
        }
    }

    #[test]
    fn every_style_uses_vocabulary_and_names_every_object() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let options = [
            CaptionOptions::default(),
            CaptionOptions {
                shuffle_objects: true,
                word_dropout: 0.3,
                absent_classes: 0.5,
            },
        ];
        for scene in scenes(60) {
            for opts in &options {
                for style in CaptionStyle::ALL {
                    let c = scene.caption(style, opts, &mut rng);
                    check(&scene, &c);
                    match style {
                        CaptionStyle::Empty => assert_eq!(c.text, ""),
                        CaptionStyle::ClassList => {
                            assert_eq!(*c.words.last().unwrap(), "background", "{:?}", c.text);
                            assert_eq!(c.background_words, vec![c.words.len() - 1]);
                            let mut uniq = c.words.clone();
                            uniq.sort_unstable();
                            uniq.dedup();
                            assert_eq!(uniq.len(), c.words.len(), "repeated class in {:?}", c.text);
                        }
                        CaptionStyle::ColourShape if opts.word_dropout == 0.0 => {
                            assert_eq!(c.words.len(), 2 * scene.objects.len());
                        }
                        CaptionStyle::Sentence if opts.word_dropout == 0.0 => {
                            for o in &scene.objects {
                                assert!(c.words.contains(&o.colour.name()), "{:?}", c.text);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn sentence_example_reads_naturally() {
        let scene = scenes(40)
            .into_iter()
            .find(|s| {
                s.objects.len() == 2
                    && (s.objects[0].colour, s.objects[0].shape)
                        != (s.objects[1].colour, s.objects[1].shape)
            })
            .expect("a two-object scene");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen_templates = std::collections::HashSet::new();
        for _ in 0..60 {
            let c = scene.caption(CaptionStyle::Sentence, &CaptionOptions::default(), &mut rng);
            assert_eq!(
                c.words.iter().filter(|w| **w == "and").count(),
                1,
                "{:?}",
                c.text
            );
            let (a, b) = (&scene.objects[0], &scene.objects[1]);
            let first = format!("{} {}", a.colour, a.shape);
            let second = format!("{} {}", b.colour, b.shape);
            assert!(
                c.text.find(&first).unwrap() < c.text.find(&second).unwrap(),
                "{:?}",
                c.text
            );
            let bg = format!("{} background", scene.background());
            seen_templates.insert((c.text.contains(&bg), c.text.ends_with(&bg)));
            // Articles agree with the next word.
            for w in c.words.windows(2) {
                if w[0] == "a" {
                    assert!(!w[1].starts_with('o'), "{:?}", c.text);
                }
                if w[0] == "an" {
                    assert_eq!(w[1], "orange", "{:?}", c.text);
                }
            }
        }
        assert_eq!(seen_templates.len(), 3, "{seen_templates:?}");
    }

    #[test]
    fn class_list_links_repeated_shapes_to_one_word() {
        let config = SceneConfig::default();
        let scene = (0..400)
            .map(|s| Scene::generate(&config, s).unwrap())
            .find(|s| {
                s.objects.len() >= 2
                    && s.objects
                        .iter()
                        .filter(|o| o.shape == s.objects[0].shape)
                        .count()
                        >= 2
            })
            .expect("a scene with a repeated shape");
        let c = scene.caption(
            CaptionStyle::ClassList,
            &CaptionOptions::default(),
            &mut ChaCha8Rng::seed_from_u64(2),
        );
        let shape = scene.objects[0].shape;
        let k = c.words.iter().position(|w| *w == shape.name()).unwrap();
        for (i, o) in scene.objects.iter().enumerate() {
            if o.shape == shape {
                assert_eq!(c.objects[i].words, vec![k]);
            }
        }
    }

    #[test]
    fn dropout_keeps_shapes_and_drops_others() {
        let scene = scenes(10)
            .into_iter()
            .find(|s| s.objects.len() == 3)
            .unwrap();
        let opts = CaptionOptions {
            shuffle_objects: false,
            word_dropout: 1.0,
            absent_classes: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = scene.caption(CaptionStyle::Sentence, &opts, &mut rng);
        let shapes: Vec<&str> = scene.objects.iter().map(|o| o.shape.name()).collect();
        assert_eq!(c.words, shapes);
        let c = scene.caption(CaptionStyle::ClassList, &opts, &mut rng);
        assert_eq!(*c.words.last().unwrap(), "background");
    }

    #[test]
    fn shuffle_changes_order_sometimes() {
        let scene = scenes(10)
            .into_iter()
            .find(|s| s.objects.len() == 3)
            .unwrap();
        let opts = CaptionOptions {
            shuffle_objects: true,
            word_dropout: 0.0,
            absent_classes: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let texts: std::collections::HashSet<String> = (0..30)
            .map(|_| {
                scene
                    .caption(CaptionStyle::ColourShape, &opts, &mut rng)
                    .text
            })
            .collect();
        assert!(texts.len() >= 4, "{texts:?}");
    }

    #[test]
    fn sampler_follows_weights() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let sampler = CaptionSampler {
            sentence: 0.0,
            class_list: 1.0,
            colour_shape: 0.0,
            empty: 3.0,
            options: CaptionOptions::default(),
        };
        let n = 4000;
        let empty = (0..n)
            .filter(|_| sampler.pick_style(&mut rng) == CaptionStyle::Empty)
            .count();
        assert!((2850..=3150).contains(&empty), "{empty}");
        let none = CaptionSampler {
            sentence: 0.0,
            class_list: 0.0,
            colour_shape: 0.0,
            empty: 0.0,
            options: CaptionOptions::default(),
        };
        assert_eq!(none.pick_style(&mut rng), CaptionStyle::Sentence);
    }

    #[test]
    fn class_lists_may_name_absent_shapes() {
        let opts = CaptionOptions {
            absent_classes: 1.0,
            ..CaptionOptions::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut longest = 0;
        for scene in scenes(40) {
            let c = scene.caption(CaptionStyle::ClassList, &opts, &mut rng);
            check(&scene, &c);
            let present: Vec<&str> = scene.objects.iter().map(|o| o.shape.name()).collect();
            let absent = c
                .words
                .iter()
                .filter(|w| !present.contains(w) && **w != "background");
            let absent = absent.count();
            assert!(absent >= 1, "no absent shape in {:?}", c.text);
            assert_eq!(*c.words.last().unwrap(), "background");
            // Absent words name no object.
            for co in &c.objects {
                for &k in &co.words {
                    assert!(present.contains(&c.words[k]), "{:?}", c.text);
                }
            }
            longest = longest.max(c.words.len());
        }
        // Some list names all eight shapes.
        assert_eq!(longest, 9);
        // Off by default: the class list names only what is there.
        for scene in scenes(20) {
            let c = scene.caption(
                CaptionStyle::ClassList,
                &CaptionOptions::default(),
                &mut rng,
            );
            let mut shapes: Vec<&str> = scene.objects.iter().map(|o| o.shape.name()).collect();
            shapes.sort_unstable();
            shapes.dedup();
            assert_eq!(c.words.len(), shapes.len() + 1, "{:?}", c.text);
        }
    }
}
