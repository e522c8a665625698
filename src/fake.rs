//! Synthetic data for the random provider, `gorgon seed` and the simulator.

use chrono::{DateTime, Utc};
use rand::seq::IndexedRandom;
use rand::Rng;
use uuid::Uuid;

use crate::domain::{Extra, Item, Location};

const WORDS: &[&str] = &[
    "river",
    "mountain",
    "coffee",
    "market",
    "signal",
    "harbor",
    "garden",
    "engine",
    "winter",
    "summer",
    "orbit",
    "lantern",
    "forest",
    "copper",
    "violet",
    "thunder",
    "meadow",
    "canyon",
    "pixel",
    "rocket",
    "ember",
    "glacier",
    "marble",
    "quartz",
    "falcon",
    "tiger",
    "otter",
    "maple",
    "cedar",
    "willow",
    "sparrow",
    "comet",
    "nebula",
    "prairie",
    "delta",
    "lagoon",
    "summit",
    "valley",
    "breeze",
    "storm",
    "harvest",
    "bakery",
    "library",
    "museum",
    "station",
    "bridge",
    "tunnel",
    "castle",
    "village",
    "island",
    "desert",
    "ocean",
    "crystal",
    "shadow",
    "silver",
    "golden",
    "crimson",
    "azure",
    "jade",
    "amber",
    "ivory",
    "onyx",
    "pearl",
    "ruby",
    "sapphire",
    "concert",
    "festival",
    "parade",
    "theater",
    "gallery",
    "stadium",
    "airport",
    "railway",
    "highway",
    "avenue",
    "plaza",
    "corner",
    "rooftop",
    "balcony",
    "kitchen",
    "workshop",
    "studio",
    "office",
    "factory",
    "warehouse",
    "harbour",
    "pier",
    "beach",
    "cliff",
    "volcano",
    "geyser",
    "aurora",
    "eclipse",
    "sunrise",
    "sunset",
    "midnight",
    "morning",
    "evening",
    "weekend",
    "holiday",
];

fn words(rng: &mut impl Rng, n: usize) -> String {
    let mut out = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS.choose(rng).unwrap_or(&"gorgon"));
    }
    out
}

/// A plausible item of about 200 bytes for `user_id`, created at `ts` with id `id`.
pub fn item(rng: &mut impl Rng, id: Uuid, user_id: Uuid, ts: DateTime<Utc>) -> Item {
    let title_words = rng.random_range(3..7);
    let body_words = rng.random_range(16..26);
    let keyword_count = rng.random_range(1..4);
    Item {
        id,
        user_id,
        title: words(rng, title_words),
        body: words(rng, body_words),
        url: Some(format!("https://example.com/{}", id.simple())),
        ts,
        location: Some(Location {
            lat: rng.random_range(-60.0..70.0),
            lon: rng.random_range(-180.0..180.0),
        }),
        keywords: (0..keyword_count)
            .map(|_| WORDS.choose(rng).unwrap_or(&"gorgon").to_string())
            .collect(),
        extra: Extra::default(),
    }
}

/// A display name such as "Ada River 42".
pub fn user_name(rng: &mut impl Rng, n: u64) -> String {
    let first = [
        "Ada", "Linus", "Grace", "Ken", "Barbara", "Dennis", "Margaret", "Alan",
    ];
    format!(
        "{} {} {n}",
        first.choose(rng).unwrap_or(&"Ada"),
        words(rng, 1)
    )
}
