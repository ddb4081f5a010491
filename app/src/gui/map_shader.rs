//! The map shader (`shaders/map.wgsl`) behind an egui_wgpu paint callback: the pipeline, layout
//! and colour-map texture are built once and kept in `callback_resources`; each view owns a map
//! texture that is uploaded only when its data version changes; per frame only a small uniform.

use std::collections::HashMap;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use egui_wgpu::wgpu;

use super::colormap::{lut_rgba, LUT_SIZE};
use super::settings::Colormap;

const SHADER: &str = include_str!("../../../shaders/map.wgsl");

/// A scalar map (`width × height`, row-major) with a version that changes with its values.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarMap {
    pub version: u64,
    pub width: usize,
    pub height: usize,
    pub values: Arc<Vec<f32>>,
}

/// How a map is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapStyle {
    pub colormap: Colormap,
    pub opacity: f32,
    pub bilinear: bool,
    pub lo: f32,
    pub hi: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    range_opacity_filter: [f32; 4],
    cmap_srgb_size: [u32; 4],
}

/// One view's GPU state.
struct Slot {
    version: u64,
    size: (usize, usize),
    texture: wgpu::Texture,
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

/// Pipeline and shared textures, created once.
pub struct MapRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    lut_view: wgpu::TextureView,
    srgb_target: bool,
    slots: HashMap<u64, Slot>,
    /// Map uploads done so far (for tests and the frame benchmark).
    pub uploads: u64,
}

impl MapRenderer {
    /// Builds the pipeline for the window's target format and registers it with egui's renderer.
    pub fn install(rs: &egui_wgpu::RenderState) {
        let renderer = Self::new(&rs.device, &rs.queue, rs.target_format);
        rs.renderer.write().callback_resources.insert(renderer);
    }

    fn new(device: &wgpu::Device, queue: &wgpu::Queue, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("ditlens map shader"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let tex_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: false },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("ditlens map layout"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                tex_entry(1),
                tex_entry(2),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("ditlens map pipeline layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("ditlens map pipeline"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        let rows = Colormap::ALL.len();
        let lut = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("ditlens colour maps"),
            size: wgpu::Extent3d {
                width: LUT_SIZE as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        queue.write_texture(
            lut.as_image_copy(),
            lut_rgba(),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(LUT_SIZE as u32 * 4),
                rows_per_image: Some(rows as u32),
            },
            lut.size(),
        );
        Self {
            pipeline,
            layout,
            lut_view: lut.create_view(&Default::default()),
            srgb_target: format.is_srgb(),
            slots: HashMap::new(),
            uploads: 0,
        }
    }

    fn prepare_slot(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        id: u64,
        map: &ScalarMap,
        style: &MapStyle,
    ) {
        let size = (map.width.max(1), map.height.max(1));
        let stale = self.slots.get(&id).is_none_or(|s| s.size != size);
        if stale {
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("ditlens map"),
                size: wgpu::Extent3d {
                    width: size.0 as u32,
                    height: size.1 as u32,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::R32Float,
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            });
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ditlens map params"),
                size: std::mem::size_of::<Params>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let view = texture.create_view(&Default::default());
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("ditlens map bind group"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(&view),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(&self.lut_view),
                    },
                ],
            });
            self.slots.insert(
                id,
                Slot {
                    version: u64::MAX,
                    size,
                    texture,
                    uniform,
                    bind_group,
                },
            );
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.version != map.version && map.values.len() == size.0 * size.1 {
            queue.write_texture(
                slot.texture.as_image_copy(),
                bytemuck::cast_slice(map.values.as_slice()),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(size.0 as u32 * 4),
                    rows_per_image: Some(size.1 as u32),
                },
                slot.texture.size(),
            );
            slot.version = map.version;
            self.uploads += 1;
        }
        let params = Params {
            range_opacity_filter: [
                style.lo,
                style.hi,
                style.opacity.clamp(0.0, 1.0),
                if style.bilinear { 1.0 } else { 0.0 },
            ],
            cmap_srgb_size: [
                style.colormap.index(),
                u32::from(self.srgb_target),
                size.0 as u32,
                size.1 as u32,
            ],
        };
        queue.write_buffer(&slot.uniform, 0, bytemuck::bytes_of(&params));
    }
}

/// The per-frame callback of one map view.
pub struct MapCallback {
    pub slot: u64,
    pub map: ScalarMap,
    pub style: MapStyle,
}

impl egui_wgpu::CallbackTrait for MapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(r) = resources.get_mut::<MapRenderer>() {
            r.prepare_slot(device, queue, self.slot, &self.map, &self.style);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(r) = resources.get::<MapRenderer>() else {
            return;
        };
        let Some(slot) = r.slots.get(&self.slot) else {
            return;
        };
        pass.set_pipeline(&r.pipeline);
        pass.set_bind_group(0, &slot.bind_group, &[]);
        pass.draw(0..6, 0..1);
    }
}

/// Adds the map over `rect` to the painter (a no-op without a wgpu renderer).
pub fn paint(ui: &egui::Ui, rect: egui::Rect, slot: u64, map: &ScalarMap, style: MapStyle) {
    ui.painter().add(egui_wgpu::Callback::new_paint_callback(
        rect,
        MapCallback {
            slot,
            map: map.clone(),
            style,
        },
    ));
}
