//! The `halfscale` element: a `GstVideoFilter` whose output caps are its input's at half the
//! width and height (see [`crate::halve::half_even`]).

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct HalfScale(ObjectSubclass<imp::HalfScale>) @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

pub(crate) fn register(plugin: Option<&gst::Plugin>) -> Result<(), glib::BoolError> {
    gst::Element::register(plugin, "halfscale", gst::Rank::NONE, HalfScale::static_type())
}

mod imp {
    use std::sync::LazyLock;

    use gst::glib;
    use gst::prelude::*;
    use gst::subclass::prelude::*;
    use gst_base::subclass::prelude::*;
    use gst_video::prelude::*;
    use gst_video::subclass::prelude::*;

    use crate::halve::{half_even, halve_plane};

    #[derive(Default)]
    pub struct HalfScale;

    #[glib::object_subclass]
    impl ObjectSubclass for HalfScale {
        const NAME: &'static str = "GstHalfScale";
        type Type = super::HalfScale;
        type ParentType = gst_video::VideoFilter;
    }

    impl ObjectImpl for HalfScale {}
    impl GstObjectImpl for HalfScale {}

    impl ElementImpl for HalfScale {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "Half scaler",
                    "Filter/Converter/Video/Scaler",
                    "Halves width and height by averaging each 2x2 block (output rounded down to even sizes)",
                    "pixelpass",
                )
            });
            Some(&*META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                let caps = gst_video::VideoCapsBuilder::new()
                    .format_list([gst_video::VideoFormat::I420, gst_video::VideoFormat::Nv12])
                    .build();
                [gst::PadDirection::Src, gst::PadDirection::Sink]
                    .into_iter()
                    .map(|dir| {
                        let name = if dir == gst::PadDirection::Src { "src" } else { "sink" };
                        gst::PadTemplate::new(name, dir, gst::PadPresence::Always, &caps).expect("pad template")
                    })
                    .collect()
            });
            TEMPLATES.as_ref()
        }
    }

    impl BaseTransformImpl for HalfScale {
        const MODE: gst_base::subclass::BaseTransformMode = gst_base::subclass::BaseTransformMode::NeverInPlace;
        const PASSTHROUGH_ON_SAME_CAPS: bool = false;
        const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

        fn transform_caps(
            &self,
            direction: gst::PadDirection,
            caps: &gst::Caps,
            filter: Option<&gst::Caps>,
        ) -> Option<gst::Caps> {
            let mut out = caps.clone();
            for s in out.make_mut().iter_mut() {
                for field in ["width", "height"] {
                    let v = size_across(direction, s.value(field).ok());
                    s.set_value(field, v);
                }
            }
            Some(match filter {
                Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
                None => out,
            })
        }
    }

    /// A width or height on one side as the other side has it: halved going downstream
    /// (`direction` Sink), the inputs that halve to it going upstream.
    fn size_across(direction: gst::PadDirection, v: Option<&glib::SendValue>) -> glib::SendValue {
        let (lo, hi) = match v {
            Some(v) if let Ok(n) = v.get::<i32>() => (n, n),
            Some(v) if let Ok(r) = v.get::<gst::IntRange<i32>>() => (r.min(), r.max()),
            _ => (1, i32::MAX),
        };
        let (lo, hi) = if direction == gst::PadDirection::Sink {
            let half = |n: i32| half_even(n.max(1) as u32) as i32;
            (half(lo), half(hi))
        } else {
            (lo.saturating_mul(2), hi.saturating_mul(2).saturating_add(3))
        };
        if lo == hi {
            lo.to_send_value()
        } else {
            gst::IntRange::new(lo, hi).to_send_value()
        }
    }

    impl VideoFilterImpl for HalfScale {
        fn transform_frame(
            &self,
            inframe: &gst_video::VideoFrameRef<&gst::BufferRef>,
            outframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        ) -> Result<gst::FlowSuccess, gst::FlowError> {
            let nv12 = outframe.format() == gst_video::VideoFormat::Nv12;
            for plane in 0..outframe.n_planes() {
                // I420: one component per plane; NV12's plane 1 holds U and V side by side
                let (w, h) = (
                    outframe.comp_width(plane) as usize,
                    outframe.comp_height(plane) as usize,
                );
                let src_stride = inframe.plane_stride()[plane as usize] as usize;
                let dst_stride = outframe.plane_stride()[plane as usize] as usize;
                let src = inframe.plane_data(plane).map_err(|_| gst::FlowError::Error)?;
                let dst = outframe.plane_data_mut(plane).map_err(|_| gst::FlowError::Error)?;
                if nv12 && plane == 1 {
                    halve_plane::<2>(src, src_stride, dst, dst_stride, w, h);
                } else {
                    halve_plane::<1>(src, src_stride, dst, dst_stride, w, h);
                }
            }
            Ok(gst::FlowSuccess::Ok)
        }
    }
}
