//! Unit tests of the window's pure parts: class parsing, the command line's plan, frame
//! statistics, colour maps.

use std::time::{Duration, Instant};

use clap::Parser;

use super::app::parse_classes;
use super::bench::FrameStats;
use super::colormap::{colour, lut_rgba, LUT_SIZE};
use super::plan;
use super::settings::Colormap;
use crate::cli::{Cli, Command};

fn gui_args(args: &[&str]) -> crate::cli::GuiArgs {
    let cli = Cli::try_parse_from(std::iter::once("ditlens").chain(args.iter().copied()))
        .expect("parses");
    match cli.command {
        Some(Command::Gui(a)) => a,
        None => cli.window,
        Some(other) => panic!("not the window: {other:?}"),
    }
}

#[test]
fn classes_are_comma_separated_and_trimmed() {
    assert_eq!(
        parse_classes(" circle ,  red   square,, background "),
        vec!["circle", "red square", "background"]
    );
    assert!(parse_classes(" , ").is_empty());
}

#[test]
fn the_window_takes_its_options_with_or_without_the_subcommand() {
    let a = gui_args(&["--prompt", "a red circle", "--seed", "4", "--layer", "3"]);
    let (model, script) = plan(&a).expect("plan");
    assert!(model.is_none());
    assert_eq!(script.layer, Some(3));
    assert!(!script.unattended());
    assert!(!script.welcome, "the named job runs instead");
    let (_, bare) = plan(&gui_args(&[])).expect("plan");
    assert!(
        bare.welcome,
        "with no arguments the window generates at once"
    );
    let a = gui_args(&["--sample-scene", "--perturb", "3,4", "--export-all", "out"]);
    let (_, script) = plan(&a).expect("plan");
    assert!(!script.welcome && script.unattended());
    assert_eq!(script.perturb, Some(vec![3, 4]));
    let a = gui_args(&[
        "gui",
        "--image",
        "x.png",
        "--classes",
        "circle,background",
        "--screenshot",
        "o.png",
    ]);
    let (_, script) = plan(&a).expect("plan");
    assert!(script.unattended());
    assert!(plan(&gui_args(&["--prompt", "p", "--image", "x.png"])).is_err());
    assert!(plan(&gui_args(&["--classes", "a"])).is_err());
    assert!(plan(&gui_args(&["--model", "m", "--embedded", "plain"])).is_err());
    // A subcommand's own --model still belongs to it.
    assert!(Cli::try_parse_from([
        "ditlens", "generate", "--model", "m", "--prompt", "p", "--out", "o.png"
    ])
    .is_ok());
}

#[test]
fn frame_statistics_give_mean_and_p95() {
    let mut s = FrameStats::default();
    let t0 = Instant::now();
    s.record(t0);
    s.record(t0 + Duration::from_millis(10));
    s.record(t0 + Duration::from_millis(30));
    assert_eq!(s.frames(), 3);
    let r = s.report();
    assert!(r.contains("mean 15.00 ms, p95 20.00 ms"), "{r}");
}

#[test]
fn colour_maps_cover_every_map_and_clamp() {
    assert_eq!(lut_rgba().len(), Colormap::ALL.len() * LUT_SIZE * 4);
    let lo = colour(Colormap::Gray, -1.0, 0.0, 1.0);
    let hi = colour(Colormap::Gray, 2.0, 0.0, 1.0);
    assert!(lo.r() < 10 && hi.r() > 245, "{lo:?} {hi:?}");
    assert_eq!(
        colour(Colormap::Viridis, f32::NAN, 0.0, 1.0),
        colour(Colormap::Viridis, 0.0, 0.0, 1.0)
    );
}

#[test]
fn centre_square_keeps_the_middle_columns_or_rows() {
    use super::protocol::Picture;
    // 4 × 2: pixel value = x + 10·y in every channel.
    let wide = Picture {
        rgb: (0..2)
            .flat_map(|y| (0..4).flat_map(move |x| [x + 10 * y; 3]))
            .collect(),
        width: 4,
        height: 2,
    };
    let sq = wide.centre_square();
    assert_eq!((sq.width, sq.height), (2, 2));
    let firsts: Vec<u8> = sq.rgb.chunks(3).map(|p| p[0]).collect();
    assert_eq!(firsts, vec![1, 2, 11, 12]);
    let tall = Picture {
        rgb: (0..3).flat_map(|y| [y as u8 * 50; 3]).collect(),
        width: 1,
        height: 3,
    };
    assert_eq!(tall.centre_square().rgb, vec![50, 50, 50]);
    assert_eq!(sq.centre_square(), sq);
}
